//! Why a packet left a program the way it did, and flow events. Indexes the per-CPU
//! `REASONS` array: every exit of every program increments exactly one verdict reason.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $label:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
        pub enum Reason { $($(#[doc = $doc])* $name,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];
            /// A stable snake_case label (metrics, dumps).
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }
        }
    };
}

reasons! {
    /// XDP: neither IPv4 nor IPv6 (ARP, ...): passed untouched.
    PassNotIp = "xdp_pass_not_ip",
    /// XDP: no frontend matches destination, port and protocol: passed untouched.
    PassNotOurs = "xdp_pass_not_ours",
    /// XDP: an IP fragment that cannot be translated: a later IPv4 fragment whose first
    /// fragment was not seen (or not ours), or any IPv6 fragment: passed untouched (ports
    /// are only in the first fragment).
    PassFragment = "xdp_pass_fragment",
    /// XDP: IPv6 with more extension headers than the program walks (4), or a routing
    /// header with segments left (the destination is not the final one): passed untouched.
    PassIpv6ExtHeaders = "xdp_pass_ipv6_ext_headers",
    /// XDP: truncated or malformed L3/L4 header (and UDP over IPv6 with a zero checksum,
    /// which IPv6 forbids): passed untouched for the stack to judge.
    PassMalformed = "xdp_pass_malformed",
    /// XDP: translated, then handed to the stack (fib lookup not successful, or the egress
    /// device cannot take XDP frames).
    PassToStack = "xdp_pass_to_stack",
    /// XDP: translated and redirected to the egress device.
    Redirect = "xdp_redirect",
    /// XDP: the frontend has no usable backend and no refusal could be sent (a RST, IPv4
    /// options or IPv6 extension headers, or the refusal budget spent).
    DropNoBackend = "xdp_drop_no_backend",
    /// XDP: no usable backend: a TCP RST was sent back (XDP_TX).
    TxRefuseTcpRst = "xdp_tx_refuse_tcp_rst",
    /// XDP: no usable backend: an ICMP (IPv4) or ICMPv6 port unreachable was sent back
    /// (XDP_TX).
    TxRefuseIcmpUnreachable = "xdp_tx_refuse_icmp_unreachable",
    /// XDP: no usable backend and this CPU's refusal budget is spent: dropped.
    DropRefusalRateLimited = "xdp_drop_refusal_rate_limited",
    /// XDP: an ICMP or ICMPv6 error about a translated flow was translated to its backend.
    IcmpErrorTranslated = "xdp_icmp_error_translated",
    /// Event: ClientIP session affinity sent a new flow to the client's previous backend.
    AffinityHit = "affinity_hit",
    /// Event: a new flow was tracked.
    CtNew = "ct_new",
    /// Event: a packet matched a tracked flow.
    CtHit = "ct_hit",
    /// Event: a non-SYN packet had no conntrack entry (LRU eviction, or a flow from before
    /// the agent started) and was selected afresh.
    CtMiss = "ct_miss",
    /// Event: a TCP SYN found an existing entry and selected afresh (client port reuse).
    CtSynReselect = "ct_syn_reselect",
    /// Event: a tracked flow's backend is gone; the flow was selected afresh.
    CtStaleBackend = "ct_stale_backend",
    /// Event: the chosen backend already had a reply entry of the same client address and
    /// port for another frontend; another slot was tried.
    CtReplyClash = "ct_reply_clash",
    /// Event: writing a conntrack entry failed.
    CtUpdateFailed = "ct_update_failed",
    /// TC: a reply was rewritten back to the frontend the client dialled.
    TcRevNat = "tc_revnat",
    /// TC: not a reply of a tracked flow: passed untouched.
    TcPassNotOurs = "tc_pass_not_ours",
    /// TC: an ICMP or ICMPv6 error about a translated flow was translated back to the
    /// frontend.
    TcIcmpErrorTranslated = "tc_icmp_error_translated",
    /// TC: rewriting a reply failed (helper error): passed as is.
    TcRewriteFailed = "tc_rewrite_failed",
    /// Event: a packet matched a flow whose entry had expired (its state's timeout ran);
    /// it was treated as a new flow.
    CtExpired = "ct_expired",
    /// Event: a TCP flow was confirmed (the backend answered, the client went on) and moved
    /// from the SYN table to the established one.
    CtConfirmed = "ct_confirmed",
    /// Event: a flow's REPLY entry had been evicted and was written again.
    CtReplyRebuilt = "ct_reply_rebuilt",
    /// TC: a reply matched a REPLY entry whose flow is expired, or closed and this is a new
    /// handshake, or names another backend (a connection straight to the backend reusing
    /// the client port): passed untouched.
    TcPassStale = "tc_pass_stale",
    /// XDP: no usable backend, and the refusal would go to an address that must never get
    /// one (the packet's source is broadcast, multicast, unspecified, loopback, IPv4-mapped
    /// or one of this node's addresses): dropped, nothing sent.
    DropRefusalBadDestination = "xdp_drop_refusal_bad_destination",
    /// Event: a selection-table slot, a tracked flow or an affinity entry named a backend
    /// whose service id differs from the frontend's; that backend was not used.
    BackendServiceMismatch = "backend_service_mismatch",
    /// XDP: a new flow from a client outside the service's `loadBalancerSourceRanges`:
    /// dropped (also counted per service in `SOURCE_DENIED`).
    DropSourceRange = "xdp_drop_source_range",
    /// XDP: a new flow of an `externalTrafficPolicy: Local` frontend on a node without a
    /// usable local endpoint: dropped, as kube-proxy does.
    DropNoLocalEndpoint = "xdp_drop_no_local_endpoint",
    /// Event: a new flow to an endpoint on another node was source-NATed.
    SnatNew = "snat_new",
    /// XDP: no free port of the NAT port range for this backend and node address (every
    /// port is held by a live flow): dropped. Widen `dataplane.nat_ports`.
    DropSnatPortExhausted = "xdp_drop_snat_port_exhausted",
    /// XDP: no route (or no source address) towards an endpoint on another node: dropped.
    DropSnatNoRoute = "xdp_drop_snat_no_route",
    /// XDP: a reply of a source-NATed flow was translated back to the client.
    RevSnat = "xdp_rev_snat",
    /// XDP: a packet to the NAT port range of a node address without a live SNAT flow:
    /// passed untouched.
    PassSnatStale = "xdp_pass_snat_stale",
    /// XDP: a later IPv4 fragment translated as its datagram's first fragment was.
    FragmentTranslated = "xdp_fragment_translated",
    /// TC: a later IPv4 fragment of a reply translated as its first fragment was.
    TcFragmentTranslated = "tc_fragment_translated",
    /// Event: a new flow to an endpoint on another node was sent there by direct server
    /// return.
    DsrNew = "dsr_new",
    /// XDP: a packet of a direct-server-return flow was encapsulated (IPIP) towards its
    /// endpoint's node.
    DsrEncapsulated = "xdp_dsr_encapsulated",
    /// XDP: an encapsulated packet for a local endpoint of a direct-server-return frontend
    /// was decapsulated and translated.
    DsrDecapsulated = "xdp_dsr_decapsulated",
    /// XDP: a packet that would exceed the path MTU once encapsulated: an ICMP
    /// fragmentation needed (with the MTU less the encapsulation) was sent back (XDP_TX).
    TxFragNeeded = "xdp_tx_frag_needed",
}

impl Reason {
    pub const COUNT: u32 = Self::ALL.len() as u32;
}
