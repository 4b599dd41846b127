##! Stowaway in a Zeek cluster.
##!
##! Everything per connection (HTTP Host, DNS query, TLS SNI, the conn.log flag)
##! is decided on the worker that sees the connection, and logs and notices flow to
##! the logger/manager as usual; notice suppression is cluster-wide through the
##! notice framework.
##!
##! The one piece of shared state is the cache of addresses from DNS answers for
##! listed names (``resolved_ip``): the DNS answer and the later connection to the
##! returned address usually land on different workers. A worker that learns an
##! answer publishes it to the manager, which relays it to all workers. The relay
##! takes milliseconds, and a client connects right after its answer, so the check
##! is made twice: when the connection starts, and again when it ends (by which time
##! the answer has arrived), against the time the connection started.

@load base/frameworks/cluster
@load base/misc/version
@load ./main

module Stowaway;

export {
	## Carries one learned answer address between cluster nodes.
	global share_answer: event(a: addr, r: ResolvedAnswer);
}

@if ( Cluster::is_enabled() )

# Cluster::publish() arrived in Zeek 7.1 with pluggable cluster backends (zeek/zeek
# PRs #4034, #4116) and is the only call that works on a non-Broker backend such as
# ZeroMQ; Zeek 6.0 and 7.0 have Broker::publish() only.
function publish_answer(topic: string, a: addr, r: ResolvedAnswer)
	{
@if ( Version::number >= 70100 )
	Cluster::publish(topic, Stowaway::share_answer, a, r);
@else
	Broker::publish(topic, Stowaway::share_answer, a, r);
@endif
	}

hook answer_learned(a: addr, r: ResolvedAnswer)
	{
	if ( Cluster::local_node_type() == Cluster::WORKER )
		publish_answer(Cluster::manager_topic, a, r);
	}

event Stowaway::share_answer(a: addr, r: ResolvedAnswer)
	{
	if ( Cluster::local_node_type() == Cluster::MANAGER )
		publish_answer(Cluster::worker_topic, a, r);
	else
		remember_answer(a, r);
	}

@endif
