##! Stowaway: tag container traffic to IP-geolocation / what-is-my-IP services.
##! Load with ``@load stowaway`` (zkg) or ``@load <path>/zeek_scripts``.

@load ./config
@load ./input
@load ./main
@load ./cluster
@load ./stratum
