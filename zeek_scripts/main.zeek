##! Stowaway: containers asking where they are (MITRE ATT&CK T1614, System Location
##! Discovery). Traffic from a container subnet to an IP-geolocation / what-is-my-IP
##! service is written to ``container_geo.log`` and raises the notice
##! :zeek:see:`Stowaway::Container_Geo_Lookup`. Evidence, by ``method``:
##!
##! * ``http``: the request's Host header (port stripped) names a listed service, or
##!   the request asks a cloud instance-metadata endpoint for its location;
##! * ``dns``: the query names a listed service, matched on label boundaries
##!   (``www.ipinfo.io`` -> ``ipinfo.io``; ``notipinfo.io`` does not match);
##!   DNS echo tricks such as ``myip.opendns.com`` are listed too;
##! * ``tls``: the client hello's SNI names a listed service;
##! * ``resolved_ip``: the connection went to an address that a DNS answer for a
##!   listed name returned (remembered for the answer's TTL, bounded in size) and
##!   nothing name-based matched on it: HTTPS without SNI, raw TCP, QUIC, fronting.
##!
##! conn.log gains ``container`` (T when the originator is in a container subnet).

@load base/frameworks/notice
@load base/protocols/conn
@load base/protocols/dns
@load base/protocols/http
@load base/protocols/ssl
@load ./config
@load ./input

module Stowaway;

export {
	redef enum Log::ID += { LOG };

	## Filter hook for the container_geo stream.
	global log_policy: Log::PolicyHook;

	redef enum Notice::Type += {
		## A container contacted (or resolved) an IP-geolocation / IP-echo service.
		## One notice per (container address, service) per
		## :zeek:see:`Stowaway::notice_suppress_for`.
		Container_Geo_Lookup,
	};

	## One line of container_geo.log.
	type Info: record {
		## When the evidence was seen (request, query, client hello; for
		## ``resolved_ip`` the connection start).
		ts: time &log;
		## Connection uid (joins conn/dns/http/ssl.log).
		uid: string &log;
		## Connection 4-tuple; orig_h is the container address.
		id: conn_id &log;
		## http | dns | tls | resolved_ip
		method: string &log;
		## Service name from geo_services.tsv (e.g. ``ipinfo``), or
		## ``<cloud>-metadata`` for instance-metadata location requests.
		service: string &log;
		## ip_geolocation | ip_echo | dns_echo | cloud_metadata
		category: string &log &optional;
		## HTTP Host (port stripped), DNS query, TLS SNI, or for ``resolved_ip`` the
		## listed name whose DNS answer returned the destination address.
		host: string &log &optional;
		## HTTP request URI.
		uri: string &log &optional;
		## HTTP User-Agent.
		user_agent: string &log &optional;
		## Container holding orig_h, from the address map (when known).
		container_id: string &log &optional;
		## Container name, from the address map (when known).
		container_name: string &log &optional;
		## Container image, from the address map (when known).
		image: string &log &optional;
	};

	## Raised for every container_geo.log record.
	global log_container_geo: event(rec: Info);

	## An address learned from a DNS answer for a listed name.
	type ResolvedAnswer: record {
		## The listed name (or the query that led to it through CNAMEs).
		name: string;
		service: string;
		category: string &optional;
		## Trust the address until then (answer time + capped TTL + grace).
		expires: time;
	};

	## Addresses returned by DNS answers for listed names (any client's answers: a
	## container's lookups often leave the host through the runtime's own resolver).
	global resolved: table[addr] of ResolvedAnswer &create_expire=resolved_max_ttl + resolved_ttl_grace;

	## Is ``a`` in a container subnet (built-in set or the site file)?
	global is_container_addr: function(a: addr): bool;

	## The listed domain that ``name`` falls under (label boundaries), or "".
	global match_service_domain: function(name: string): string;

	## Remember an answer address for a listed name (also used by the cluster relay).
	global remember_answer: function(a: addr, r: ResolvedAnswer);

	## Hook for the cluster relay: called for each newly learned answer address.
	global answer_learned: hook(a: addr, r: ResolvedAnswer);
}

redef record Conn::Info += {
	## T when the originator address lies in a container subnet (Stowaway). The
	## default keeps connections from elsewhere free of any work: they log F.
	container: bool &log &default=F;
};

# Per-connection state: which (method, service) pairs were logged, whether a
# name-based match happened, and an answer address seen at connection start.
type ConnState: record {
	logged: set[string];
	named: bool &default=F;
	resolved: ResolvedAnswer &optional;
};

redef record connection += {
	stowaway: ConnState &optional;
};

global cache_full_warned = F;

function is_container_addr(a: addr): bool
	{
	return a in container_subnets || a in site_container_subnets;
	}

function match_service_domain(name: string): string
	{
	# One DFA match rejects almost every name; the label walk runs on hits only.
	if ( ! geo_names_ready || ! ( geo_names_pattern == name ) )
		return "";

	local n = to_lower(strip(name));
	n = sub(n, /\.+$/, "");
	local hops = 0;

	while ( n != "" && hops < 128 )
		{
		if ( n in geo_services )
			return n;

		local parts = split_string1(n, /\./);
		if ( |parts| < 2 )
			break;

		n = parts[1];
		++hops;
		}

	return "";
	}

# "ipinfo.io:8080" -> "ipinfo.io"; "[2001:db8::1]:80" -> "2001:db8::1"; a bare
# IPv6 literal (more than one colon, no brackets) is kept whole.
function host_without_port(host: string): string
	{
	local h = to_lower(strip(host));

	if ( /^\[/ in h )
		{
		local v6 = split_string1(sub(h, /^\[/, ""), /\]/);
		return v6[0];
		}

	if ( |split_string(h, /:/)| > 2 )
		return h;

	local parts = split_string1(h, /:/);
	return sub(parts[0], /\.+$/, "");
	}

function get_state(c: connection): ConnState
	{
	if ( ! c?$stowaway )
		{
		local logged: set[string] = set();
		c$stowaway = ConnState($logged=logged);
		}

	return c$stowaway;
	}

function log_lookup(c: connection, ts: time, method: string, service: string,
    category: string, host: string, uri: string, user_agent: string)
	{
	local st = get_state(c);

	if ( method != "resolved_ip" )
		st$named = T;

	local key = cat(method, "/", service);
	if ( key in st$logged )
		return;

	add st$logged[key];

	local info = Info($ts=ts, $uid=c$uid, $id=c$id, $method=method, $service=service);
	if ( category != "" )
		info$category = category;
	if ( host != "" )
		info$host = host;
	if ( uri != "" )
		info$uri = uri;
	if ( user_agent != "" )
		info$user_agent = user_agent;

	local who = cat(c$id$orig_h);
	local orig = c$id$orig_h;
	if ( orig in container_addresses )
		{
		# "-" arrives as unset; an empty column arrives as "" (the ASCII reader
		# keeps a trailing empty field): both mean unknown.
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

	Log::write(Stowaway::LOG, info);

	NOTICE([$note=Container_Geo_Lookup, $conn=c,
	        $msg=fmt("container %s looked up its location via %s (%s %s)", who,
	                 service, method, host),
	        $sub=host,
	        $identifier=cat(orig, "/", service),
	        $suppress_for=notice_suppress_for]);
	}

function report_name(c: connection, ts: time, method: string, name: string, uri: string,
    user_agent: string): bool
	{
	local key = match_service_domain(name);
	if ( key == "" )
		return F;

	local gs = geo_services[key];
	log_lookup(c, ts, method, gs$service, gs?$category ? gs$category : "", to_lower(name),
	           uri, user_agent);
	return T;
	}

function remember_answer(a: addr, r: ResolvedAnswer)
	{
	if ( a !in resolved && |resolved| >= resolved_max_entries )
		{
		if ( ! cache_full_warned )
			{
			cache_full_warned = T;
			Reporter::warning(fmt("Stowaway: resolved-address cache full (%d entries); new answers are ignored until entries expire",
			                      resolved_max_entries));
			}
		return;
		}

	# Delete first: assigning to an existing key keeps the entry's creation time,
	# so a re-learned address would still expire on its first answer's schedule.
	if ( a in resolved )
		delete resolved[a];

	resolved[a] = r;
	}

function learn_answer(c: connection, ans: dns_answer, a: addr)
	{
	local name = ans$query;
	local key = match_service_domain(name);

	# CNAME chains: the A record belongs to the alias target; fall back to the
	# question asked on this connection.
	if ( key == "" && c?$dns && c$dns?$query )
		{
		name = c$dns$query;
		key = match_service_domain(name);
		}

	if ( key == "" )
		return;

	local gs = geo_services[key];

	# A DNS echo service answers with the asker's own public address, not with a
	# server of the service: nothing to remember.
	if ( gs?$category && gs$category == "dns_echo" )
		return;

	local ttl = ans$TTL < resolved_max_ttl ? ans$TTL : resolved_max_ttl;
	local r = ResolvedAnswer($name=to_lower(name), $service=gs$service,
	                         $expires=network_time() + ttl + resolved_ttl_grace);
	if ( gs?$category )
		r$category = gs$category;

	remember_answer(a, r);
	hook Stowaway::answer_learned(a, r);
	}

function answer_for(a: addr, t: time): bool
	{
	return a in resolved && t <= resolved[a]$expires;
	}

event zeek_init() &priority=5
	{
	Log::create_stream(Stowaway::LOG, [$columns=Info, $ev=log_container_geo,
	    $path="container_geo", $policy=log_policy]);
	}

# The metadata endpoint (longest listed path prefix, compared without case) that an
# HTTP request to ``host`` for ``uri`` asks for its location, as "<cloud>-metadata",
# or "". Only called for hosts that http_hosts_pattern accepts.
function metadata_service(host: string, uri: string): string
	{
	local luri = to_lower(uri == "" ? "/" : uri);
	local best = "";
	local best_cloud = "";

	for ( [mhost, mprefix] in metadata_endpoints )
		{
		if ( mhost != host || |mprefix| <= |best| )
			next;

		# strstr is 1-based: 1 means the URI starts with the prefix.
		if ( strstr(luri, to_lower(mprefix)) != 1 )
			next;

		local mv = metadata_endpoints[mhost, mprefix];
		best = mprefix;
		best_cloud = mv?$cloud ? mv$cloud : "cloud";
		}

	return best == "" ? "" : cat(best_cloud, "-metadata");
	}

# One check per HTTP request, when its message is complete (headers, URI and
# User-Agent known). HTTP::Info$host is the Host header as sent, port included (Zeek
# >= 5.0, zeek/zeek#1844), so the bracketed IPv6 metadata host is seen whole. No
# per-header handler: http_header is raised for every header, http_all_headers makes
# Zeek build a header list for every message.
event http_message_done(c: connection, is_orig: bool, stat: http_message_stat)
	{
	if ( ! is_orig || ! http_hosts_ready )
		return;

	local orig = c$id$orig_h;
	if ( orig !in container_subnets && orig !in site_container_subnets )
		return;

	if ( ! c?$http || ! c$http?$host || ! ( http_hosts_pattern == c$http$host ) )
		return;

	local host = host_without_port(c$http$host);
	local ts = c$http?$ts ? c$http$ts : network_time();
	local uri = c$http?$uri ? c$http$uri : "";
	local ua = c$http?$user_agent ? c$http$user_agent : "";

	if ( report_name(c, ts, "http", host, uri, ua) )
		return;

	local service = metadata_service(host, uri);
	if ( service != "" )
		log_lookup(c, ts, "http", service, "cloud_metadata", host, uri, ua);
	}

event dns_request(c: connection, msg: dns_msg, query: string, qtype: count, qclass: count)
	{
	local orig = c$id$orig_h;
	if ( orig !in container_subnets && orig !in site_container_subnets )
		return;

	# The pattern check inline: most queries name nothing listed.
	if ( ! geo_names_ready || ! ( geo_names_pattern == query ) )
		return;

	report_name(c, network_time(), "dns", query, "", "");
	}

event dns_A_reply(c: connection, msg: dns_msg, ans: dns_answer, a: addr)
	{
	# Every client's answers count, so keep the common miss cheap: the answer's name
	# and the question asked on this connection (CNAME chains) against the pattern.
	if ( ! geo_names_ready || ( ! ( geo_names_pattern == ans$query ) &&
	     ! ( c?$dns && c$dns?$query && geo_names_pattern == c$dns$query ) ) )
		return;

	learn_answer(c, ans, a);
	}

event dns_AAAA_reply(c: connection, msg: dns_msg, ans: dns_answer, a: addr)
	{
	# Every client's answers count, so keep the common miss cheap: the answer's name
	# and the question asked on this connection (CNAME chains) against the pattern.
	if ( ! geo_names_ready || ( ! ( geo_names_pattern == ans$query ) &&
	     ! ( c?$dns && c$dns?$query && geo_names_pattern == c$dns$query ) ) )
		return;

	learn_answer(c, ans, a);
	}

event ssl_extension_server_name(c: connection, is_client: bool, names: string_vec)
	{
	local orig = c$id$orig_h;
	if ( ! is_client || ( orig !in container_subnets && orig !in site_container_subnets ) )
		return;

	for ( i in names )
		report_name(c, network_time(), "tls", names[i], "", "");
	}

# Only connections to a remembered answer address do anything here: one table lookup
# for every other connection.
event new_connection(c: connection)
	{
	local resp = c$id$resp_h;
	if ( resp !in resolved )
		return;

	local orig = c$id$orig_h;
	if ( orig !in container_subnets && orig !in site_container_subnets )
		return;

	# Keep the answer valid at connection start: it may expire (or be replaced)
	# before the connection ends.
	if ( answer_for(resp, network_time()) )
		get_state(c)$resolved = resolved[resp];
	}

# Priority 1: after Conn's set_conn (5), before conn.log is written (-5). Connections
# from outside the container subnets cost one subnet lookup (conn.log's container
# defaults to F).
event connection_state_remove(c: connection) &priority=1
	{
	local orig = c$id$orig_h;
	if ( orig !in container_subnets && orig !in site_container_subnets )
		return;

	if ( c?$conn )
		c$conn$container = T;

	if ( ! c?$stowaway )
		{
		# In a cluster the answer may have arrived from another worker after this
		# connection started: look again now.
		if ( c$id$resp_h in resolved && answer_for(c$id$resp_h, c$start_time) )
			{
			local r0 = resolved[c$id$resp_h];
			log_lookup(c, c$start_time, "resolved_ip", r0$service,
			           r0?$category ? r0$category : "", r0$name, "", "");
			}
		return;
		}

	local st = c$stowaway;

	if ( st$named )
		return;

	local r: ResolvedAnswer;

	if ( st?$resolved )
		r = st$resolved;
	else if ( answer_for(c$id$resp_h, c$start_time) )
		r = resolved[c$id$resp_h];
	else
		return;

	log_lookup(c, c$start_time, "resolved_ip", r$service, r?$category ? r$category : "",
	       r$name, "", "");
	}
