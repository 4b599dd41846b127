# @TEST-DOC: Missing optional data files (site subnets, address map, metadata paths) are reported and do not hold the trace forever; detection still works with the built-in subnets.
# @TEST-EXEC: cp $FILES/geo_services.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/dns.pcap $PACKAGE/__load__.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h method service host container_name < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out

redef Stowaway::geo_services_file = "geo_services.tsv";
redef Stowaway::metadata_endpoints_file = "no-such-metadata.tsv";
redef Stowaway::container_subnets_file = "no-such-subnets.tsv";
redef Stowaway::container_addresses_file = "no-such-addresses.tsv";
