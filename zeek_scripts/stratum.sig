# Stowaway: stratum (cryptocurrency mining pool) JSON-RPC from a client, on any TCP port.
# Matched by Zeek's signature engine on the originator's stream; the script side
# (stratum.zeek) keeps only matches from container subnets.

signature stowaway-stratum-mining {
	ip-proto == tcp
	tcp-state originator
	payload /.*\"method\"[[:space:]]*:[[:space:]]*\"mining\.(subscribe|authorize|submit|extranonce\.subscribe|configure)\"/
	event "stratum mining JSON-RPC"
}

# Monero-style stratum (xmrig and forks): a "login" call that names its mining agent.
signature stowaway-stratum-login {
	ip-proto == tcp
	tcp-state originator
	payload /.*\"method\"[[:space:]]*:[[:space:]]*\"login\".*\"agent\"[[:space:]]*:/
	event "stratum login JSON-RPC"
}
