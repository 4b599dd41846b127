# @TEST-DOC: Real traffic (fixture churn): each of the 40 one-shot --rm containers (172.17.0.19-58, one nslookup of checkip.amazonaws.com each) is tagged with a dns row and a notice of its own; the background is not.
# @TEST-EXEC: zcat $SCENARIOS/churn.pcap.gz | zeek -C -r - $PACKAGE/__load__.zeek
# @TEST-EXEC: python3 $SCRIPTS/check_labels.py $SCENARIOS/labels.tsv churn container_geo.log notice.log > check.out
# @TEST-EXEC: btest-diff check.out
# @TEST-EXEC: zeek-cut id.orig_h method service category host < container_geo.log | sort -u -t . -k 4n > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut src note < notice.log | sort -u | wc -l | tr -d ' ' > notice-count.out
# @TEST-EXEC: btest-diff notice-count.out
