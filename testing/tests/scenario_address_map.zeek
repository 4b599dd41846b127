# @TEST-DOC: The container address map (Stowaway::container_addresses_file, columns ip container_id container_name image, as the scheduler writes it from container_inventory) puts the container id, name and image of the labelled container on every geo_lookup row and names the container in the notice.
# @TEST-EXEC: cp $SCENARIOS/geo_lookup.addresses.tsv container_addresses.tsv
# @TEST-EXEC: zcat $SCENARIOS/geo_lookup.pcap.gz | zeek -C -r - $PACKAGE/__load__.zeek Stowaway::container_addresses_file=container_addresses.tsv
# @TEST-EXEC: python3 $SCRIPTS/check_labels.py --with-map $SCENARIOS/labels.tsv geo_lookup container_geo.log notice.log > check.out
# @TEST-EXEC: btest-diff check.out
# @TEST-EXEC: zeek-cut id.orig_h method host container_id container_name image < container_geo.log | sort > geo.out
# @TEST-EXEC: btest-diff geo.out
# @TEST-EXEC: zeek-cut src msg < notice.log | sort > notice.out
# @TEST-EXEC: btest-diff notice.out
