# @TEST-DOC: TLS client hello SNI of a listed service from a container is logged; another SNI is not.
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/tls.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.resp_h id.resp_p method service category host container_name < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut server_name < ssl.log | sort > sni.out
# @TEST-EXEC: btest-diff sni.out
