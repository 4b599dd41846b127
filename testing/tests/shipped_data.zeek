# @TEST-DOC: The package's own data files (shared indicator list, metadata paths, subnets, empty address map) load and drive detection without any test overrides.
# @TEST-EXEC: zeek -C -r $TRACES/http.pcap $PACKAGE/__load__.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.resp_h id.resp_p method service category host uri user_agent container_name < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out
