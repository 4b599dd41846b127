##! Stowaway: settings. Everything here can be changed with ``redef`` in local.zeek
##! (``option`` values also at runtime through the config framework).

module Stowaway;

export {
	## Container bridge and pod networks known before any file is read: Docker's
	## default bridge (docker0) and Podman's default network. Sites add their own
	## ranges here, or, without editing scripts, one CIDR per line in
	## :zeek:see:`Stowaway::container_subnets_file` (re-read when it changes).
	## Keep in sync with osquery_ext/data/container_subnets.tsv (a test checks it).
	option container_subnets: set[subnet] = { 172.17.0.0/16, 10.88.0.0/16 };

	## Site list of container CIDRs (columns ``subnet runtime note``; only the first
	## column is used). Same file format as the Python side's container_subnets.tsv.
	const container_subnets_file = @DIR + "/data/container_subnets.tsv" &redef;

	## IP-geolocation / what-is-my-IP services (columns ``domain service category``),
	## a byte-identical copy of osquery_ext/data/geo_services.tsv.
	const geo_services_file = @DIR + "/data/geo_services.tsv" &redef;

	## Cloud instance-metadata location paths (columns ``host path_prefix cloud what``).
	const metadata_endpoints_file = @DIR + "/data/metadata_endpoints.tsv" &redef;

	## Container address map written by the Stowaway scheduler from osquery's
	## container_inventory (columns ``ip container_id container_name image``; use
	## ``-`` for an unknown value). The shipped file has a header only.
	const container_addresses_file = @DIR + "/data/container_addresses.tsv" &redef;

	## How long one (container address, service) notice suppresses repeats.
	const notice_suppress_for: interval = 1 hr &redef;

	## Addresses from DNS answers for listed names are trusted for the answer's TTL,
	## capped at this value ...
	const resolved_max_ttl: interval = 1 hr &redef;

	## ... plus this grace period (clients and stub resolvers cache past the TTL).
	const resolved_ttl_grace: interval = 1 min &redef;

	## Upper bound on remembered answer addresses; new ones are dropped (with one
	## reporter warning) while the cache is full. Entries also expire on their own.
	const resolved_max_entries: count = 100000 &redef;

	## Re-read the data files when they change (live capture). When reading a pcap
	## (``zeek -r``) they are always read once, before the first packet.
	const reread_files = T &redef;
}
