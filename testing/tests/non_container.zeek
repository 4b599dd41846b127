# @TEST-DOC: The same lookups from outside every container subnet produce no container_geo.log and no notice; conn.log says container=F.
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/non_container.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: test ! -e container_geo.log
# @TEST-EXEC: test ! -e notice.log
# @TEST-EXEC: zeek-cut id.orig_h container < conn.log | sort -u > conn.out
# @TEST-EXEC: btest-diff conn.out
