# @TEST-DOC: HTTPS without a listed SNI to an address from a DNS answer for a listed name is logged as resolved_ip while the answer's TTL (+ grace) holds; non-container sources and late connections are not. conn.log carries the container flag.
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/resolved.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.orig_p id.resp_h id.resp_p method service host < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut id.orig_h id.orig_p id.resp_p container < conn.log | sort > conn.out
# @TEST-EXEC: btest-diff conn.out
