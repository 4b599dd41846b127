# @TEST-DOC: Real traffic (fixture geo_lookup: real podman containers, addresses rewritten, fake internet) with the package's shipped data: each of the 7 labelled lookups A1-A7 gets its dns/http/tls rows in container_geo.log and is covered by a notice; nothing else is logged.
# @TEST-EXEC: zcat $SCENARIOS/geo_lookup.pcap.gz | zeek -C -r - $PACKAGE/__load__.zeek
# @TEST-EXEC: python3 $SCRIPTS/check_labels.py $SCENARIOS/labels.tsv geo_lookup container_geo.log notice.log > check.out
# @TEST-EXEC: btest-diff check.out
# @TEST-EXEC: zeek-cut id.orig_h id.orig_p id.resp_h id.resp_p method service category host uri user_agent < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut src note sub msg < notice.log | sort > notice.out
# @TEST-EXEC: btest-diff notice.out
