# @TEST-DOC: Stratum JSON-RPC (mining.subscribe; Monero-style login with agent) from container addresses on any port gives stratum.log lines and Container_Stratum notices; the same from a non-container host and ordinary JSON-RPC from a container give nothing; no signature-framework notices.
# @TEST-EXEC: cp $FILES/*.tsv .
# @TEST-EXEC: zeek -C -r $TRACES/stratum.pcap $PACKAGE/__load__.zeek $FILES/test-setup.zeek %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.resp_h id.resp_p method agent < stratum.log | sort > stratum.out
# @TEST-EXEC: btest-diff stratum.out
# @TEST-EXEC: zeek-cut note src msg < notice.log | sort > notice.out
# @TEST-EXEC: btest-diff notice.out
