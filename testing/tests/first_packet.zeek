# @TEST-DOC: Offline mode is right from the first packet: the trace starts with the lookup, from a subnet only the site file names, attributed from the address map. Zeek holds the trace until every data file is read.
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/first_packet.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h method service host container_id container_name image < container_geo.log > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut id.orig_h container < conn.log > conn.out
# @TEST-EXEC: btest-diff conn.out
