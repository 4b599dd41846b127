# @TEST-DOC: HTTP Host of a listed service from a container: port stripped, label walk, case folded, metadata location path; other hosts ignored.
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/http.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.resp_h id.resp_p method service category host uri user_agent container_name < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut note src msg < notice.log | sort > notice.out
# @TEST-EXEC: btest-diff notice.out
