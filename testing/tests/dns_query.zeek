# @TEST-DOC: DNS queries from a container: label-boundary match, DNS echo trick, A+AAAA on one socket logged once, attribution from the address map.
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/dns.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.resp_h id.resp_p method service category host container_name image < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut note src msg < notice.log | sort > notice.out
# @TEST-EXEC: btest-diff notice.out
