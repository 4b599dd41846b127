##! Stowaway: the data files (indicator list, metadata paths, site subnets, container
##! address map), read with the input framework.
##!
##! Live capture: every file is read in REREAD mode, so edits (new site subnets, the
##! scheduler rewriting the address map) take effect without restarting Zeek.
##!
##! Offline (``zeek -r file.pcap``): the input framework reads files in a background
##! thread, so the first packets of a trace would be analysed before the tables are
##! filled and early lookups would be missed. When :zeek:see:`reading_traces` is true
##! we therefore read every file once (MANUAL mode) and hold packet processing with
##! :zeek:see:`suspend_processing` until each stream has reported
##! :zeek:see:`Input::end_of_data` (or failed, see below), then
##! :zeek:see:`continue_processing`. The result is the same from the first packet on.
##!
##! A file that cannot be opened produces no end_of_data, only an error event. So a
##! file missing at start-up is skipped with a warning, and an error event on a
##! stream (unreadable file, missing column) also releases the wait: a bad optional
##! file cannot hang Zeek.
##!
##! Cluster: the input framework runs on every node that loads this package, so each
##! node needs the files at the same path (zkg installs the shipped ones; the
##! scheduler must write the address map on every sensor host).

@load base/frameworks/input
@load ./config

module Stowaway;

export {
	## One line of geo_services.tsv: the index ...
	type GeoIdx: record {
		domain: string;
	};

	## ... and the value.
	type GeoVal: record {
		service: string;
		category: string &optional;
	};

	## Listed service domains (lower case, no trailing dot) -> service.
	global geo_services: table[string] of GeoVal = table();

	## metadata_endpoints.tsv index ...
	type MetaIdx: record {
		host: string;
		path_prefix: string;
	};

	## ... and value.
	type MetaVal: record {
		cloud: string &optional;
		what: string &optional;
	};

	## (host, path prefix) -> cloud instance-metadata location endpoint.
	global metadata_endpoints: table[string, string] of MetaVal = table();

	## container_addresses.tsv index. The column is called ``ip`` because ``addr``
	## is a type keyword in the Zeek language and cannot name a record field.
	type AddrIdx: record {
		ip: addr;
	};

	## What the scheduler knows about the container holding an address.
	type ContainerVal: record {
		container_id: string &optional;
		container_name: string &optional;
		image: string &optional;
	};

	## Container address -> container (from osquery's container_inventory).
	global container_addresses: table[addr] of ContainerVal = table();

	## Container CIDRs read from :zeek:see:`Stowaway::container_subnets_file`.
	global site_container_subnets: set[subnet] = set();

	## Matches (whole string, any case) a name that is a listed domain or falls under
	## one on a label boundary. Rebuilt from :zeek:see:`Stowaway::geo_services` each
	## time the file has been (re)read, so the common case, a name that matches
	## nothing, costs one DFA match instead of a walk over its labels.
	global geo_names_pattern: pattern = /^$/;

	## False until :zeek:see:`Stowaway::geo_names_pattern` has been built.
	global geo_names_ready = F;

	## Matches (whole string, any case) an HTTP Host header as sent that can be
	## evidence: a name under a listed domain or a metadata endpoint host, with an
	## optional port (``[fd00:ec2::254]:80``). Rebuilt with the tables; every other
	## request costs one DFA match.
	global http_hosts_pattern: pattern = /^$/;

	## False until :zeek:see:`Stowaway::http_hosts_pattern` has been built.
	global http_hosts_ready = F;

	## Raised once every data stream has been read for the first time (or failed).
	global data_ready: event();

	## True once :zeek:see:`Stowaway::data_ready` has been raised.
	global data_loaded = F;
}

# Input stream names.
const GEO_STREAM = "stowaway-geo-services";
const META_STREAM = "stowaway-metadata-endpoints";
const ADDR_STREAM = "stowaway-container-addresses";
const SUBNET_STREAM = "stowaway-site-subnets";

# container_subnets.tsv has a column named ``subnet``, also a type keyword, so it
# cannot be mapped onto a record by the ASCII reader. It is read line by line with
# the raw reader instead; lines collect here and replace the live set at end_of_data.
type RawLine: record {
	s: string;
};

global subnet_lines: set[subnet] = set();
global pending_streams: set[string] = set();
global holding_packets = F;

function input_mode(): Input::Mode
	{
	if ( reading_traces() || ! reread_files )
		return Input::MANUAL;
	return Input::REREAD;
	}

# A stream has delivered its first complete read (or given up): release the pcap when
# it was the last one.
function stream_settled(name: string)
	{
	if ( name !in pending_streams )
		return;

	delete pending_streams[name];

	if ( |pending_streams| > 0 )
		return;

	if ( ! data_loaded )
		{
		data_loaded = T;
		event Stowaway::data_ready();
		}

	if ( holding_packets )
		{
		holding_packets = F;
		continue_processing();
		}
	}

# Is this input-framework message one after which the stream will never report
# end_of_data (file missing, unreadable or without the columns we need)?
function fatal_input_message(message: string, level: Reporter::Level): bool
	{
	if ( level == Reporter::ERROR )
		return T;

	return /cannot open|could not be read|Did not find requested field|Could not get stat/ in message;
	}

event Stowaway::table_input_error(desc: Input::TableDescription, message: string,
    level: Reporter::Level)
	{
	if ( fatal_input_message(message, level) )
		{
		Reporter::warning(fmt("Stowaway: %s not loaded: %s", desc$source, message));
		stream_settled(desc$name);
		}
	}

event Stowaway::event_input_error(desc: Input::EventDescription, message: string,
    level: Reporter::Level)
	{
	if ( fatal_input_message(message, level) )
		{
		Reporter::warning(fmt("Stowaway: %s not loaded: %s", desc$source, message));
		stream_settled(desc$name);
		}
	}

event Stowaway::subnet_line(desc: Input::EventDescription, tpe: Input::Event, s: string)
	{
	local line = strip(s);
	if ( line == "" || /^#/ in line )
		return;

	local cols = split_string1(line, /[ \t]/);
	local first = strip(cols[0]);
	if ( ! ( /^[0-9a-fA-F:.]+\/[0-9]+$/ in first ) )
		{
		Reporter::warning(fmt("Stowaway: ignoring bad subnet '%s' in %s", first, desc$source));
		return;
		}

	add subnet_lines[to_subnet(first)];
	}

# "ipinfo.io" -> "ipinfo\.io"; a name with anything but [a-z0-9._:-] (which could
# change the pattern's meaning) is left out of the pattern with a warning.
function name_regex(name: string, what: string): string
	{
	if ( ! ( /^[a-zA-Z0-9._:-]+$/ == name ) )
		{
		Reporter::warning(fmt("Stowaway: %s '%s' has characters outside [a-z0-9._:-]; ignored",
		                      what, name));
		return "";
		}

	return gsub(name, /\./, "\\.");
	}

function geo_alternatives(): vector of string
	{
	local alts: vector of string = vector();

	for ( domain in geo_services )
		{
		local rx = name_regex(domain, "geo service domain");
		if ( rx != "" )
			alts += rx;
		}

	return alts;
	}

function metadata_alternatives(): vector of string
	{
	local hosts: set[string] = set();
	local alts: vector of string = vector();

	for ( [mhost, mprefix] in metadata_endpoints )
		add hosts[mhost];

	for ( h in hosts )
		{
		local rx = name_regex(h, "metadata host");
		if ( rx != "" )
			alts += rx;
		}

	return alts;
	}

# Both patterns, from the tables as they are now (called after each complete read of
# geo_services.tsv or metadata_endpoints.tsv).
function build_name_patterns()
	{
	local geo = geo_alternatives();
	local meta = metadata_alternatives();
	local names = fmt("(.*\\.)?(%s)\\.*", join_string_vec(geo, "|"));

	geo_names_ready = |geo| > 0;
	if ( geo_names_ready )
		geo_names_pattern = string_to_pattern(fmt("(?i:^%s$)", names), F);

	local hosts: vector of string = vector();
	if ( |geo| > 0 )
		hosts += names;
	if ( |meta| > 0 )
		hosts += fmt("\\[?(%s)\\]?", join_string_vec(meta, "|"));

	http_hosts_ready = |hosts| > 0;
	if ( http_hosts_ready )
		http_hosts_pattern = string_to_pattern(
		    fmt("(?i:^[[:space:]]*(%s)(:[0-9]*)?[[:space:]]*$)", join_string_vec(hosts, "|")),
		    F);
	}

event Input::end_of_data(name: string, source: string)
	{
	if ( name == SUBNET_STREAM )
		{
		# A complete (re)read: the file is the truth, including removals.
		site_container_subnets = subnet_lines;
		subnet_lines = set();
		}
	else if ( name == GEO_STREAM || name == META_STREAM )
		build_name_patterns();

	stream_settled(name);
	}

# Whether to start a stream on ``path``. A missing file never produces end_of_data
# and the raw reader gives up on it for good, so when it is missing at start-up we
# skip it (with a warning) instead of waiting for it. Live ASCII streams are started
# anyway: in REREAD mode they keep looking and pick the file up once it appears.
function should_start(name: string, path: string, retries_when_missing: bool): bool
	{
	if ( file_size(path) >= 0.0 )
		return T;

	Reporter::warning(fmt("Stowaway: data file %s not found (%s)", path, name));

	if ( retries_when_missing && input_mode() == Input::REREAD )
		return T;

	stream_settled(name);
	return F;
	}

function start_stream(name: string, ok: bool)
	{
	if ( ! ok )
		{
		Reporter::warning(fmt("Stowaway: cannot start input stream %s", name));
		stream_settled(name);
		}
	}

event zeek_init() &priority=10
	{
	add pending_streams[GEO_STREAM];
	add pending_streams[META_STREAM];
	add pending_streams[ADDR_STREAM];
	add pending_streams[SUBNET_STREAM];

	if ( reading_traces() )
		{
		# Hold the trace until the tables are filled (see the file header).
		holding_packets = T;
		suspend_processing();
		}

	local mode = input_mode();

	if ( should_start(GEO_STREAM, geo_services_file, T) )
		start_stream(GEO_STREAM, Input::add_table([$source=geo_services_file,
		    $name=GEO_STREAM, $idx=GeoIdx, $val=GeoVal, $destination=geo_services,
		    $mode=mode, $error_ev=Stowaway::table_input_error]));

	if ( should_start(META_STREAM, metadata_endpoints_file, T) )
		start_stream(META_STREAM, Input::add_table([$source=metadata_endpoints_file,
		    $name=META_STREAM, $idx=MetaIdx, $val=MetaVal,
		    $destination=metadata_endpoints, $mode=mode,
		    $error_ev=Stowaway::table_input_error]));

	if ( should_start(ADDR_STREAM, container_addresses_file, T) )
		start_stream(ADDR_STREAM, Input::add_table([$source=container_addresses_file,
		    $name=ADDR_STREAM, $idx=AddrIdx, $val=ContainerVal,
		    $destination=container_addresses, $mode=mode,
		    $error_ev=Stowaway::table_input_error]));

	if ( should_start(SUBNET_STREAM, container_subnets_file, F) )
		start_stream(SUBNET_STREAM, Input::add_event([$source=container_subnets_file,
		    $reader=Input::READER_RAW, $name=SUBNET_STREAM, $fields=RawLine,
		    $want_record=F, $ev=Stowaway::subnet_line, $mode=mode,
		    $error_ev=Stowaway::event_input_error]));
	}
