# @TEST-DOC: Real traffic (fixture benign: no location discovery) with the package's shipped data: no container_geo.log and no notice; conn.log marks the container connections.
# @TEST-EXEC: zcat $SCENARIOS/benign.pcap.gz | zeek -C -r - $PACKAGE/__load__.zeek
# @TEST-EXEC: test ! -e container_geo.log
# @TEST-EXEC: test ! -e notice.log
# @TEST-EXEC: zeek-cut container < conn.log | sort | uniq -c | sed 's/^ *//' > conn.out
# @TEST-EXEC: btest-diff conn.out
