##! Stowaway: cryptomining from containers. A container's TCP connection that speaks
##! stratum JSON-RPC (``mining.subscribe`` / ``mining.authorize`` / ``mining.submit``,
##! or the Monero-style ``login`` with an ``agent``), on any port, is written to
##! ``stratum.log`` and raises the notice ``Stowaway::Container_Stratum``.
##!
##! Cost: no per-packet script work. The payload patterns live in stratum.sig and run
##! in Zeek's signature engine; this script runs only on a signature match, and only
##! matches whose originator is in a container subnet are kept (one log line per
##! connection: the first stratum message). The signature framework's own
##! reporting of these signatures is off (our notice replaces it).

@load base/frameworks/notice
@load base/frameworks/signatures
@load-sigs ./stratum.sig

module Stowaway;

export {
	redef enum Log::ID += { STRATUM_LOG };

	## Filter hook for the stratum stream.
	global stratum_log_policy: Log::PolicyHook;

	redef enum Notice::Type += {
		## A container spoke stratum (mining pool protocol). One notice per
		## (container address, pool address and port) per
		## :zeek:see:`Stowaway::notice_suppress_for`.
		Container_Stratum,
	};

	## One line of stratum.log.
	type StratumInfo: record {
		## Time of the matching payload.
		ts: time &log;
		## Connection uid (joins conn.log).
		uid: string &log;
		## Connection 4-tuple; orig_h is the container address.
		id: conn_id &log;
		## The JSON-RPC method seen (``mining.subscribe``, ``login``, ...).
		method: string &log;
		## The mining agent the client names, when it does (``XMRig/6.21.0``).
		agent: string &log &optional;
		## Container holding orig_h, from the address map (when known).
		container_id: string &log &optional;
		## Container name, from the address map (when known).
		container_name: string &log &optional;
		## Container image, from the address map (when known).
		image: string &log &optional;
	};

	## Raised for every stratum.log record.
	global log_stratum: event(rec: StratumInfo);
}

redef Signatures::actions += {
	["stowaway-stratum-mining"] = Signatures::SIG_IGNORE,
	["stowaway-stratum-login"] = Signatures::SIG_IGNORE,
};

# Connections (uid/method) already logged; expires with the connection's likely life.
global stratum_seen: set[string] &create_expire=1hr;

function stratum_method(data: string): string
	{
	local m = match_pattern(data, /\"method\"[[:space:]]*:[[:space:]]*\"[^\"]{1,64}\"/);
	if ( ! m$matched )
		return "";
	local parts = split_string(m$str, /\"/);
	return |parts| >= 4 ? parts[3] : "";
	}

function stratum_agent(data: string): string
	{
	local m = match_pattern(data, /\"agent\"[[:space:]]*:[[:space:]]*\"[^\"]{1,128}\"/);
	if ( ! m$matched )
		return "";
	local parts = split_string(m$str, /\"/);
	return |parts| >= 4 ? parts[3] : "";
	}

event zeek_init() &priority=5
	{
	Log::create_stream(Stowaway::STRATUM_LOG, [$columns=StratumInfo, $ev=log_stratum,
	                   $path="stratum", $policy=stratum_log_policy]);
	}

event signature_match(state: signature_state, msg: string, data: string)
	{
	if ( ! starts_with(state$sig_id, "stowaway-stratum") )
		return;
	local c = state$conn;
	if ( ! is_container_addr(c$id$orig_h) )
		return;
	local method = stratum_method(data);
	if ( method == "" )
		method = "stratum";
	local key = cat(c$uid, "/", method);
	if ( key in stratum_seen )
		return;
	add stratum_seen[key];

	local info = StratumInfo($ts=network_time(), $uid=c$uid, $id=c$id, $method=method);
	local agent = stratum_agent(data);
	if ( agent != "" )
		info$agent = agent;
	local orig = c$id$orig_h;
	local who = cat(orig);
	if ( orig in container_addresses )
		{
		local cv = container_addresses[orig];
		if ( cv?$container_id && cv$container_id != "" )
			info$container_id = cv$container_id;
		if ( cv?$container_name && cv$container_name != "" )
			{
			info$container_name = cv$container_name;
			who = fmt("%s (%s)", cv$container_name, orig);
			}
		if ( cv?$image && cv$image != "" )
			info$image = cv$image;
		}
	Log::write(Stowaway::STRATUM_LOG, info);

	NOTICE([$note=Container_Stratum, $conn=c,
	        $msg=fmt("container %s speaks stratum (%s) to %s:%s: cryptomining", who,
	                 method, c$id$resp_h, c$id$resp_p),
	        $sub=method,
	        $identifier=cat(orig, "/", c$id$resp_h, "/", c$id$resp_p),
	        $suppress_for=notice_suppress_for]);
	}
