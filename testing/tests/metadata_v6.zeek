# @TEST-DOC: A container on an IPv6 network (site subnet file) asks the AWS IPv6 metadata endpoint, Host "[fd00:ec2::254]", for its placement: matched on the raw Host header (HTTP::Info$host is cut at the first colon).
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/metadata_v6.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.resp_h id.resp_p method service category host uri < container_geo.log > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut id.orig_h container < conn.log > conn.out
# @TEST-EXEC: btest-diff conn.out
