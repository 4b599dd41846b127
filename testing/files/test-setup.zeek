# Point the package at the test copies of its data files (copied into each test's
# working directory by the test's first command).
redef Stowaway::geo_services_file = "geo_services.tsv";
redef Stowaway::metadata_endpoints_file = "metadata_endpoints.tsv";
redef Stowaway::container_subnets_file = "container_subnets.tsv";
redef Stowaway::container_addresses_file = "container_addresses.tsv";
