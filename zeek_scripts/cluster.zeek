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
@load ./main

module Stowaway;

export {
	## Carries one learned answer address between cluster nodes.
	global share_answer: event(a: addr, r: ResolvedAnswer);
}

@if ( Cluster::is_enabled() )

hook answer_learned(a: addr, r: ResolvedAnswer)
	{
	if ( Cluster::local_node_type() == Cluster::WORKER )
		Broker::publish(Cluster::manager_topic, Stowaway::share_answer, a, r);
	}

event Stowaway::share_answer(a: addr, r: ResolvedAnswer)
	{
	if ( Cluster::local_node_type() == Cluster::MANAGER )
		Broker::publish(Cluster::worker_topic, Stowaway::share_answer, a, r);
	else
		remember_answer(a, r);
	}

@endif
