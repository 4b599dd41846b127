# @TEST-DOC: A real cluster (manager, proxy, two workers; Zeek's supervisor, no zeekctl) in a network namespace of its own: worker-1 sees a container's DNS answer for ipinfo.io, worker-2 sees the container's later TCP connection to the answered address (no SNI), and the manager's container_geo.log has its resolved_ip row; a control connection to an address no answer named has none. Needs root (netns, veth) and scapy; skipped otherwise.
# @TEST-REQUIRES: test "$(id -u)" = 0
# @TEST-REQUIRES: ip netns list >/dev/null 2>&1
# @TEST-REQUIRES: python3 -c 'import scapy.all'
# @TEST-EXEC: python3 $SCRIPTS/zeek_cluster.py $PACKAGE %INPUT > cluster.out
# @TEST-EXEC: btest-diff cluster.out

# The helper each node loads next to the package: marker files tell the harness what
# has happened (no fixed sleeps).

@load base/frameworks/cluster

module StowawayClusterTest;

export {
	const marker_dir = getenv("STOWAWAY_MARKERS") &redef;
}

# Closed connections leave the worker (and reach the logs) quickly.
redef tcp_close_delay = 100 msecs;

# Nodes that start before the manager listens retry after this (default 1 min).
redef Cluster::retry_interval = 1 sec;

function mark(what: string)
	{
	local f = open(fmt("%s/%s-%s", marker_dir, what, Cluster::node));
	print f, "ok";
	close(f);
	}

event Stowaway::data_ready()
	{
	mark("data");
	}

event Cluster::node_up(name: string, id: string)
	{
	if ( Cluster::local_node_type() == Cluster::MANAGER )
		mark(fmt("up-%s", name));
	}

event Stowaway::share_answer(a: addr, r: Stowaway::ResolvedAnswer) &priority=-10
	{
	if ( Cluster::local_node_type() == Cluster::WORKER )
		mark("relay");
	}
