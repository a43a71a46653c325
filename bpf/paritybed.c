/* paritybed.c: the kernel half of paritybed's enforcement (loaded by enforcer/kernel.py, BCC).
 *
 * One program per hook, all attached at the paritybed root cgroup so every replica cgroup
 * below it inherits them:
 *   pb_connect4 / pb_connect6   cgroup/connect4|6: egress allowlist through the BAA registry
 *   pb_sendmsg4 / pb_sendmsg6   cgroup/sendmsg4|6: the same decision for unconnected UDP sends
 *   pb_sock_create              cgroup/sock_create: refuses socket kinds an agent has no business with
 *   pb_setsockopt               cgroup/setsockopt: refuses options that would hide bytes from the parser
 *   pb_sockops                  sockops: puts TCP sockets to a policy's FHIR server in fhir_socks
 *   pb_sk_msg                   sk_msg on fhir_socks: parses each HTTP request and decides it
 *   pb_unseen                   cgroup_skb/egress: no byte to a FHIR server leaves unless sk_msg
 *                               approved exactly that byte of that connection (the backstop), no
 *                               connection is accepted by a replica, no packet carries IP options
 *                               or IPv6 extension headers
 *   pb_ingress                  cgroup_skb/ingress: nothing reaches a listener inside a replica
 * The decision is docs/enforcement.md, the same as enforcer/engine.py; the request parser is
 * the grammar of enforcer/classify.py.  Every map is pinned under PB_PIN_DIR so enforcement
 * outlives the control plane and a new control plane adopts the state.
 */
#include <uapi/linux/bpf.h>
#include <linux/socket.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include "paritybed.h"

#ifndef PB_PIN_DIR
#error "PB_PIN_DIR must be defined (the bpffs directory the maps are pinned in)"
#endif
#ifndef PB_RB_PAGES
#define PB_RB_PAGES 64
#endif
#define PIN(_name) PB_PIN_DIR "/" #_name

/* the compiler forgets what it knows about x (so a bounds check stays on x itself) */
#define BARRIER_VAR(x) asm volatile("" : "+r"(x))

/* context fields read one 32-bit load at a time (the verifier rejects merged or offset loads) */
#define CTX32(_f) (*(volatile u32 *)&(_f))

/* Everything stays in this one file: BCC rewrites map calls (map.lookup(...)) only in the main
 * source, not in included headers. */
#define PB_MAP(_type, _k, _v, _name, _max) BPF_TABLE_PINNED(_type, _k, _v, _name, _max, PIN(_name))

/* BCC has no pinned variants of these three; same layouts as its BPF_SOCKHASH,
 * BPF_SK_STORAGE and BPF_RINGBUF_OUTPUT, with a pin path in the section name. */
#define PB_SOCKHASH(_name, _key_type, _max) \
struct _name##_table_t { _key_type key; int leaf; int (*update) (_key_type *, int *); \
  int (*delete) (_key_type *); int (*sock_hash_update) (void *, void *, u64); \
  int (*msg_redirect_hash) (void *, void *, u64); int (*sk_redirect_hash) (void *, void *, u64); \
  u32 max_entries; }; \
__attribute__((section("maps/sockhash:" PIN(_name)))) struct _name##_table_t _name = { .max_entries = (_max) }; \
BPF_ANNOTATE_KV_PAIR(_name, _key_type, int)
#define PB_SK_STORAGE(_name, _leaf_type) \
struct _name##_table_t { int key; _leaf_type leaf; void * (*sk_storage_get) (void *, void *, int); \
  int (*sk_storage_delete) (void *); u32 flags; }; \
__attribute__((section("maps/sk_storage:" PIN(_name)))) struct _name##_table_t _name = { .flags = BPF_F_NO_PREALLOC }; \
BPF_ANNOTATE_KV_PAIR(_name, int, _leaf_type)
#define PB_RINGBUF(_name, _pages) \
struct _name##_table_t { int key; u32 leaf; int (*ringbuf_output) (void *, u64, u64); \
  void* (*ringbuf_reserve) (u64); void (*ringbuf_discard) (void *, u64); \
  void (*ringbuf_submit) (void *, u64); u32 max_entries; }; \
__attribute__((section("maps/ringbuf:" PIN(_name)))) struct _name##_table_t _name = { .max_entries = ((_pages) * PAGE_SIZE) }

PB_MAP("array", u32, struct pb_knobs, knobs, 1);
PB_MAP("array", u32, struct pb_ctab, ctab, 1);
PB_MAP("hash", u64, struct pb_agent, agents, 256);
PB_MAP("hash", u64, struct pb_replica, replicas, 4096);
PB_MAP("hash", struct pb_pair_key, u32, pairs, 65536);
PB_MAP("hash", struct pb_lane_key, struct pb_lane, lanes, 16384);
PB_MAP("hash", struct pb_addr_key, struct pb_endpoint, registry, 4096);
PB_MAP("hash", struct pb_envelope_key, u8, envelope, 4096);
PB_MAP("lru_hash", struct pb_seen_key, u8, seen, 65536);
PB_MAP("hash", struct pb_addr_key, u8, servers, 256);
PB_MAP("hash", u64, s64, vclock, 4096);  /* virtual clock of one replica (cgroup id), over knobs.vnow */
PB_MAP("array", u32, struct pb_ntab, ntab, 1);
PB_MAP("percpu_array", u32, u64, counters, PB_COUNTERS);
PB_MAP("array", u32, u64, lost, 1);
PB_MAP("hash", struct pb_lost_key, u64, lost_by, 4096);
PB_SOCKHASH(fhir_socks, u64, 65536);
PB_SK_STORAGE(sockstate, struct pb_sock);
PB_RINGBUF(events, PB_RB_PAGES);          /* FHIR decisions (sk_msg, the backstop) */
PB_RINGBUF(egress_events, PB_RB_PAGES);   /* egress, refusals, inbound: a flood of these cannot
                                           * push a FHIR decision out */
PB_MAP("prog", u32, u32, jmp, 4);  /* tail calls: JMP_PARSE, JMP_DECIDE */

/* ---------------------------------------------------------------- common */

/* The clock a decision for replica cgid uses: the real clock, or on the virtual clock the
 * replica's own time if the driver set one (replicas then run in parallel, each at its own
 * simulated time), else the shared knobs.vnow. */
static __always_inline s64 pb_now(struct pb_knobs *k, u64 cgid)
{
    if (k->real_clock)
        return (s64)bpf_ktime_get_ns();
    s64 *v = vclock.lookup(&cgid);
    return v ? *v : k->vnow;
}

#ifndef PB_OFF_WRITE_SEQ
#error "PB_OFF_WRITE_SEQ / PB_OFF_FASTOPEN_REQ: offsets in struct tcp_sock from this kernel's BTF (enforcer/btf.py)"
#endif

/* tcp_sock fields, read at the offsets the running kernel's BTF gives (the loader passes them):
 * BCC compiles against packaged headers, not the running kernel's layout. */
static __always_inline struct tcp_sock *pb_tcp(struct bpf_sock *sk)
{
    return sk ? bpf_skc_to_tcp_sock(sk) : 0;
}

/* tcp_sock.write_seq: the sequence number after the last byte queued on the connection */
static __always_inline int pb_write_seq(struct bpf_sock *sk, u32 *seq)
{
    struct tcp_sock *tp = pb_tcp(sk);
    if (!tp)
        return 0;
    *seq = *(volatile u32 *)((char *)tp + PB_OFF_WRITE_SEQ);
    return 1;
}

static __always_inline void pb_count(u32 kind, u32 reason)
{
    u32 i = (kind * 16 + reason) & (PB_COUNTERS - 1);
    u64 *c = counters.lookup(&i);
    if (c)
        *c += 1;
}

/* A record for the ring of its kind; when that ring is full the loss is counted by what the
 * record would have said (replica, kind, decision, reason, hook), never silent. */
static __always_inline struct pb_event *pb_reserve(u64 cgid, u8 kind, u8 decision, u8 reason, u8 hook)
{
    struct pb_event *e = kind == K_FHIR ? events.ringbuf_reserve(sizeof(struct pb_event))
                                        : egress_events.ringbuf_reserve(sizeof(struct pb_event));
    if (!e) {
        u32 z = 0;
        u64 *l = lost.lookup(&z);
        if (l)
            __sync_fetch_and_add(l, 1);
        struct pb_lost_key lk = {};
        lk.cgid = cgid;
        lk.kind = kind;
        lk.decision = decision;
        lk.reason = reason;
        lk.hook = hook;
        u64 zero = 0; /* insert-if-absent, then add: two CPUs creating the entry lose no count */
        lost_by.insert(&lk, &zero);
        u64 *n = lost_by.lookup(&lk);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
    return e;
}

/* submit a record to the ring it was reserved from */
static __always_inline void pb_submit(struct pb_event *e)
{
    if (e->kind == K_FHIR)
        events.ringbuf_submit(e, 0);
    else
        egress_events.ringbuf_submit(e, 0);
}

/* A violation becomes a decision by the agent's response mode (docs/enforcement.md, step 6). */
static __always_inline u8 pb_violation(struct pb_agent *a, struct pb_replica *r, s64 now, u8 *flags, s64 *until)
{
    if (a->mode == M_ALERT)
        return PB_ALERT;
    if (a->mode >= M_QUARANTINE) {
        s64 u = a->hold == PB_I64_MAX ? PB_I64_MAX : now + a->hold;
        r->q_until = u;
        *until = u;
        *flags |= a->mode == M_KILL ? F_KILL : F_QUARANTINE;
    }
    return PB_DENY;
}

/* ---------------------------------------------------------------- egress */

/* The egress decision (docs/enforcement.md, step 4) for a connect or an unconnected send to ak.
 * Only a TCP stream to the policy's FHIR server is the agent's own FHIR traffic: UDP (or any
 * other protocol) to that address is egress like any other.  A TCP connect that carries Fast Open
 * data (tfo) to the FHIR server is refused: those bytes would leave before the parser could see
 * them (the backstop would drop them silently; this way the caller gets EPERM). */
static __always_inline int pb_egress(struct pb_addr_key *ak, u8 hook, u8 tcp, u8 tfo)
{
    u64 cgid = bpf_get_current_cgroup_id();
    struct pb_replica *r = replicas.lookup(&cgid);
    if (!r)
        return 1; /* not a paritybed replica: unenforced */
    u32 z = 0;
    struct pb_agent *a = agents.lookup(&r->agent);
    struct pb_knobs *k = knobs.lookup(&z);
    if (!a || !k)
        return 0; /* a registered replica without its policy: fail closed */
    s64 now = pb_now(k, cgid);
    u8 decision = PB_ALLOW, reason = R_OK, flags = 0;
    s64 until = 0;
    struct pb_endpoint *ep = registry.lookup(ak);
    if (a->mode != M_OBSERVE && r->q_until > now) {
        decision = PB_DENY;
        reason = R_QUARANTINED;
    } else {
        struct pb_seen_key sk = {};
        sk.cgid = cgid;
        sk.addr = *ak;
        if (!seen.lookup(&sk)) {
            u8 one = 1;
            seen.update(&sk, &one);
            flags |= F_FIRST_CONTACT;
        }
        if (a->mode == M_OBSERVE) {
            reason = R_OBSERVE;
        } else {
            u8 v = 0;
            int server = tcp && ak->port == a->server_port && ak->addr[0] == a->server_addr[0] &&
                         ak->addr[1] == a->server_addr[1] && ak->addr[2] == a->server_addr[2] &&
                         ak->addr[3] == a->server_addr[3];
            if (server) {
                if (tfo) {
                    decision = PB_DENY;
                    reason = R_UNCLASSIFIABLE;
                    flags |= F_REFUSED;
                }
            } else if (!ep || !ep->active || now < ep->lo || now >= ep->hi) {
                v = R_NOT_BAA;
            } else {
                struct pb_envelope_key ek = {};
                ek.agent = r->agent;
                ek.name = ep->name;
                if (!envelope.lookup(&ek))
                    v = R_NOT_ENVELOPE;
            }
            if (v) {
                reason = v;
                decision = pb_violation(a, r, now, &flags, &until);
            }
        }
    }
    pb_count(K_EGRESS, reason);
    if (k->record_all || decision != PB_ALLOW || flags || a->mode == M_OBSERVE) {
        struct pb_event *e = pb_reserve(cgid, K_EGRESS, decision, reason, hook);
        if (e) {
            __builtin_memset(e, 0, sizeof(*e));
            e->t = now;
            e->cgid = cgid;
            e->until = until;
            e->registry_version = k->registry_version;
            e->endpoint = ep ? ep->name : 0;
            e->addr[0] = ak->addr[0];
            e->addr[1] = ak->addr[1];
            e->addr[2] = ak->addr[2];
            e->addr[3] = ak->addr[3];
            e->port = ak->port;
            e->kind = K_EGRESS;
            e->hook = hook;
            e->decision = decision;
            e->reason = reason;
            e->flags = flags;
            pb_submit(e);
        }
    }
    return decision == PB_DENY ? 0 : 1;
}

static __always_inline void pb_addr4(struct pb_addr_key *ak, u32 ip, u32 port_n)
{
    ak->addr[2] = bpf_htonl(0x0000ffff);
    ak->addr[3] = ip;
    ak->port = (u16)port_n;
}

/* The IPv6 destination of a connect/sendmsg; each word read on its own (32-bit context access). */
static __always_inline void pb_addr6(struct pb_addr_key *ak, struct bpf_sock_addr *ctx)
{
    ak->addr[0] = CTX32(ctx->user_ip6[0]);
    ak->addr[1] = CTX32(ctx->user_ip6[1]);
    ak->addr[2] = CTX32(ctx->user_ip6[2]);
    ak->addr[3] = CTX32(ctx->user_ip6[3]);
    ak->port = (u16)ctx->user_port;
}

/* a TCP connect is carrying Fast Open data: sendto(MSG_FASTOPEN) sets tcp_sock.fastopen_req
 * before the connect hook runs */
static __always_inline u8 pb_fastopen(struct bpf_sock_addr *ctx)
{
    struct tcp_sock *tp = pb_tcp(ctx->sk);
    return tp && *(volatile u64 *)((char *)tp + PB_OFF_FASTOPEN_REQ) != 0;
}

static __always_inline u8 pb_is_tcp(struct bpf_sock_addr *ctx)
{
    return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

int pb_connect4(struct bpf_sock_addr *ctx)
{
    struct pb_addr_key ak = {};
    u8 tcp = pb_is_tcp(ctx);
    pb_addr4(&ak, ctx->user_ip4, ctx->user_port);
    return pb_egress(&ak, HOOK_CONNECT4, tcp, tcp && pb_fastopen(ctx));
}

int pb_sendmsg4(struct bpf_sock_addr *ctx)
{
    struct pb_addr_key ak = {};
    pb_addr4(&ak, ctx->user_ip4, ctx->user_port);
    return pb_egress(&ak, HOOK_SENDMSG4, 0, 0);
}

int pb_connect6(struct bpf_sock_addr *ctx)
{
    struct pb_addr_key ak = {};
    u8 tcp = pb_is_tcp(ctx);
    pb_addr6(&ak, ctx);
    return pb_egress(&ak, HOOK_CONNECT6, tcp, tcp && pb_fastopen(ctx));
}

int pb_sendmsg6(struct bpf_sock_addr *ctx)
{
    struct pb_addr_key ak = {};
    pb_addr6(&ak, ctx);
    return pb_egress(&ak, HOOK_SENDMSG6, 0, 0);
}

/* ---------------------------------------------------------------- refusals: sockets, options, packets
 *
 * An agent replica needs TCP streams and UDP datagrams over IPv4/IPv6 (and local sockets, which
 * this hook does not see).  Every other inet socket kind is refused at socket(): raw sockets,
 * ICMP "ping" datagram sockets (unprivileged where net.ipv4.ping_group_range allows, and no
 * sendmsg hook covers them), MPTCP (its subflows would carry FHIR bytes past sk_msg), SCTP,
 * UDP-Lite.  Options that would hide bytes from the parser or send packets elsewhere than the
 * hooks saw are refused at setsockopt(): TCP_FASTOPEN_CONNECT (data in the SYN), TCP_REPAIR
 * (rewrites the stream; needs CAP_NET_ADMIN anyway), TCP_ULP (a protocol layer replacing the
 * stream the parser judges), IP_OPTIONS (source routes) and the IPv6 sticky extension headers
 * (a routing header, e.g. a segment routing header, delivers the packet to the hosts it lists:
 * the connect hook saw only the first).  The same headers given per message (ancillary data of
 * sendmsg) are caught by pb_unseen at packet level: a replica's packet with IPv4 options or an
 * IPv6 extension header other than a fragment header is dropped.  Refusals are not violations:
 * the caller gets EPERM, one event says what was refused.
 */
#define PB_SOL_IP 0
#define PB_SOL_TCP 6
#define PB_SOL_IPV6 41
#define PB_IP_OPTIONS 4
#define PB_IP_RETOPTS 7
#define PB_TCP_REPAIR 19
#define PB_TCP_FASTOPEN_CONNECT 30
#define PB_TCP_ULP 31
/* IPV6_2292HOPOPTS 3, _2292DSTOPTS 4, _2292RTHDR 5, _2292PKTOPTIONS 6, IPV6_HOPOPTS 54,
 * IPV6_RTHDRDSTOPTS 55, IPV6_RTHDR 57, IPV6_DSTOPTS 59 */
#define PB_IPV6_EXT_OPT(n) (((n) >= 3 && (n) <= 6) || (n) == 54 || (n) == 55 || (n) == 57 || (n) == 59)

static __always_inline int pb_refuse(u64 cgid, u8 hook, u16 family, u16 type, u32 protocol)
{
    struct pb_replica *r = replicas.lookup(&cgid);
    if (!r)
        return 1;
    u32 z = 0;
    struct pb_agent *a = agents.lookup(&r->agent);
    struct pb_knobs *k = knobs.lookup(&z);
    if (!a || !k)
        return 0;
    u8 observe = a->mode == M_OBSERVE;
    u8 decision = observe ? PB_ALLOW : PB_DENY, reason = observe ? R_OBSERVE : R_UNCLASSIFIABLE;
    pb_count(K_EGRESS, reason);
    struct pb_event *e = pb_reserve(cgid, K_EGRESS, decision, reason, hook);
    if (e) {
        __builtin_memset(e, 0, sizeof(*e));
        e->t = pb_now(k, cgid);
        e->cgid = cgid;
        e->kind = K_EGRESS;
        e->hook = hook;
        e->decision = decision;
        e->reason = reason;
        e->flags = F_REFUSED;
        e->sock_family = family;
        e->sock_type = type;
        e->sock_protocol = protocol;
        pb_submit(e);
    }
    return observe;
}

int pb_sock_create(struct bpf_sock *sk)
{
    u32 family = sk->family, type = sk->type, protocol = sk->protocol;
    if ((family == AF_INET || family == AF_INET6) &&
        ((type == SOCK_STREAM && protocol == IPPROTO_TCP) || (type == SOCK_DGRAM && protocol == IPPROTO_UDP)))
        return 1;
    return pb_refuse(bpf_get_current_cgroup_id(), HOOK_SOCKET, family, type, protocol);
}

int pb_setsockopt(struct bpf_sockopt *ctx)
{
    int level = ctx->level, name = ctx->optname;
    if (!((level == PB_SOL_TCP && (name == PB_TCP_FASTOPEN_CONNECT || name == PB_TCP_REPAIR || name == PB_TCP_ULP)) ||
          (level == PB_SOL_IP && (name == PB_IP_OPTIONS || name == PB_IP_RETOPTS)) ||
          (level == PB_SOL_IPV6 && PB_IPV6_EXT_OPT(name))))
        return 1;
    return pb_refuse(bpf_get_current_cgroup_id(), HOOK_SOCKOPT, 0, (u16)level, (u32)name);
}

/* A replica's packet the hooks did not see as it is (IPv4 options, IPv6 extension headers):
 * dropped, one event per socket.  what: the IPv6 next header, or 0x100 + the first option byte. */
static __always_inline int pb_refuse_packet(struct __sk_buff *skb, struct bpf_sock *sk, u16 family, u32 what)
{
    u64 cgid = bpf_skb_cgroup_id(skb);
    if (!replicas.lookup(&cgid))
        return 1;
    struct bpf_sock *fs = bpf_sk_fullsock(sk);
    struct pb_sock *ss = fs ? sockstate.sk_storage_get(fs, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
    if (ss) {
        if (ss->refused) { /* reported once per socket: the packet is retransmitted while dropped */
            struct pb_replica *r = replicas.lookup(&cgid);
            struct pb_agent *a = r ? agents.lookup(&r->agent) : 0;
            return a && a->mode == M_OBSERVE;
        }
        ss->refused = 1;
    }
    return pb_refuse(cgid, HOOK_PACKET, family, 0, what);
}

/* ---------------------------------------------------------------- sockops */

int pb_sockops(struct bpf_sock_ops *skops)
{
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    struct pb_addr_key ak = {};
    if (skops->family == AF_INET) {
        pb_addr4(&ak, CTX32(skops->remote_ip4), CTX32(skops->remote_port) >> 16);
    } else if (skops->family == AF_INET6) {
        ak.addr[0] = CTX32(skops->remote_ip6[0]);
        ak.addr[1] = CTX32(skops->remote_ip6[1]);
        ak.addr[2] = CTX32(skops->remote_ip6[2]);
        ak.addr[3] = CTX32(skops->remote_ip6[3]);
        ak.port = (u16)(CTX32(skops->remote_port) >> 16);
    } else {
        return 1;
    }
    if (!servers.lookup(&ak))
        return 1;
    u64 key = bpf_get_socket_cookie(skops);
    struct bpf_sock *sk = skops->sk;
    if (sk) {
        struct pb_sock *ss = sockstate.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (ss)
            ss->cookie = key; /* sk_msg redirects approved messages to the socket by this key */
    }
    fhir_socks.sock_hash_update(skops, &key, BPF_ANY);
    return 1;
}

struct pb_parsed {
    u64 claim;
    u32 body_len;            /* the body the head announces (Content-Length) */
    u16 type_id;
    u8 shape;
    u8 interaction;
    u8 method;
    u8 has_claim;
};

/* ---------------------------------------------------------------- the backstop: bytes sk_msg never approved
 *
 * The invariant (docs/kernel.md): no byte reaches the FHIR server unless the parser approved
 * exactly that byte of that connection.  sk_msg keeps it for every byte that goes through
 * sendmsg on a socket in fhir_socks; this program keeps it at packet level for everything else:
 * TCP Fast Open data (queued before the handshake, before sockops can add the socket), bytes of
 * a connection whose state was lost, anything a future kernel path sends around sk_msg.  The
 * SYN that opens a replica's connection to its FHIR server resets the connection's state (so
 * nothing survives a disconnect and reconnect of the same socket); sk_msg moves approved_end
 * to the sequence number after each approved message; a segment reaching past it, or carrying
 * urgent data (which a server takes out of the stream: the bytes it parses would no longer be the
 * bytes the parser approved), is dropped, the first time as a violation of the replica's
 * response mode (unclassifiable, malformed, hook unseen).  The connection then never delivers;
 * the caller is not told (its bytes were already "sent").
 *
 * A SYN-ACK from a replica is a connection the replica accepted (a listener inside it): replicas
 * are clients, so it is dropped, the first time per peer as an egress violation (hook inbound).
 */

/* A new connection of a replica to its FHIR server, from its SYN: nothing of an earlier one stays. */
static __always_inline void pb_conn_open(struct pb_sock *ss, u32 isn, u64 cgid)
{
    u32 start = isn + 1; /* the SYN takes one sequence number */
    ss->cgid = cgid;
    ss->writer = 0;
    ss->isn = isn;
    ss->next_seq = start;
    ss->msg_start = start;
    ss->head_end = start;
    ss->body_end = start;
    ss->approved_end = start;
    ss->conn = 1;
    ss->reported = 0;
}

static __always_inline int pb_inbound(struct __sk_buff *skb, struct pb_addr_key *ak)
{
    u64 cgid = bpf_skb_cgroup_id(skb);
    struct pb_replica *r = replicas.lookup(&cgid);
    if (!r)
        return 1;
    u32 z = 0;
    struct pb_agent *a = agents.lookup(&r->agent);
    struct pb_knobs *k = knobs.lookup(&z);
    if (!a || !k)
        return 0;
    s64 now = pb_now(k, cgid), until = 0;
    u8 decision = PB_ALLOW, reason = R_OBSERVE, flags = 0;
    struct pb_seen_key sk = {};
    sk.cgid = cgid;
    sk.addr = *ak;
    u8 first = !seen.lookup(&sk);
    if (first) {
        u8 one = 1;
        seen.update(&sk, &one);
        flags |= F_FIRST_CONTACT;
    }
    if (a->mode != M_OBSERVE) {
        if (r->q_until > now) {
            decision = PB_DENY;
            reason = R_QUARANTINED;
        } else {
            reason = R_NOT_ENVELOPE;
            decision = first ? pb_violation(a, r, now, &flags, &until) : (a->mode == M_ALERT ? PB_ALERT : PB_DENY);
        }
    }
    if (first) { /* the SYN-ACK is retransmitted while it is dropped: one event per peer */
        pb_count(K_EGRESS, reason);
        struct pb_event *e = pb_reserve(cgid, K_EGRESS, decision, reason, HOOK_INBOUND);
        if (e) {
            __builtin_memset(e, 0, sizeof(*e));
            e->t = now;
            e->cgid = cgid;
            e->until = until;
            e->registry_version = k->registry_version;
            e->addr[0] = ak->addr[0];
            e->addr[1] = ak->addr[1];
            e->addr[2] = ak->addr[2];
            e->addr[3] = ak->addr[3];
            e->port = ak->port;
            e->kind = K_EGRESS;
            e->hook = HOOK_INBOUND;
            e->decision = decision;
            e->reason = reason;
            e->flags = flags;
            pb_submit(e);
        }
    }
    return decision == PB_DENY ? 0 : 1;
}

int pb_unseen(struct __sk_buff *skb)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 1;
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct pb_addr_key ak = {};
    u32 off;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data;
        if ((void *)(ip + 1) > end)
            return 1;
        if ((ip->ihl & 0xf) != 5) { /* IPv4 options (a source route among them) */
            u8 *opt = (void *)(ip + 1);
            return pb_refuse_packet(skb, sk, AF_INET, 0x100 | ((void *)(opt + 1) <= end ? *opt : 0));
        }
        if (ip->protocol != IPPROTO_TCP)
            return 1;
        off = sizeof(*ip);
        pb_addr4(&ak, ip->daddr, 0);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data;
        if ((void *)(ip6 + 1) > end)
            return 1;
        u8 nh = ip6->nexthdr;
        off = sizeof(*ip6);
        if (nh == 0) { /* hop-by-hop: only BIG TCP's jumbo payload option (the kernel's own) passes */
            u8 *h = (void *)(ip6 + 1);
            if ((void *)(h + 8) > end || h[1] != 0 || h[2] != 0xc2 || h[3] != 4)
                return pb_refuse_packet(skb, sk, AF_INET6, 0);
            nh = h[0];
            off += 8;
        }
        if (nh == IPPROTO_UDP)
            return 1;
        if (nh != IPPROTO_TCP) /* routing, destination options, fragment... */
            return pb_refuse_packet(skb, sk, AF_INET6, nh);
        __builtin_memcpy(ak.addr, &ip6->daddr, 16);
    } else {
        return 1;
    }
    struct tcphdr *th = data + (off & 0x3f);
    if ((void *)(th + 1) > end)
        return 1;
    u32 hdr = off + th->doff * 4;
    u32 len = skb->len > hdr ? skb->len - hdr : 0;
    u8 syn = th->syn && !th->ack;
    if (!len && !syn) {
        if (!th->syn)
            return 1; /* ACK, FIN, RST: no data (most packets: decided before any helper call) */
        ak.port = th->dest;
        return pb_inbound(skb, &ak); /* a SYN-ACK: a connection accepted inside a replica */
    }
    sk = bpf_sk_fullsock(sk);
    if (!sk || sk->protocol != IPPROTO_TCP)
        return 1;
    u32 seq = bpf_ntohl(th->seq);
    struct pb_sock *ss;
    if (!syn) {
        /* the common case, a data segment: one storage lookup */
        ss = sockstate.sk_storage_get(sk, 0, 0);
        if (!ss || !ss->conn)
            return 1; /* not a replica's FHIR connection */
    } else {
        /* a SYN: is it a replica's connection to its own FHIR server?  then it starts afresh */
        ak.port = th->dest;
        u64 cg = bpf_sk_cgroup_id(sk);
        struct pb_replica *rr = replicas.lookup(&cg);
        if (!rr)
            return 1;
        struct pb_agent *aa = agents.lookup(&rr->agent);
        if (!aa || ak.port != aa->server_port || ak.addr[0] != aa->server_addr[0] || ak.addr[1] != aa->server_addr[1] ||
            ak.addr[2] != aa->server_addr[2] || ak.addr[3] != aa->server_addr[3])
            return 1;
        ss = sockstate.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (!ss)
            return 0;
        pb_conn_open(ss, seq, cg);
        if (!len)
            return 1;
    }
    u32 seg_end = seq + syn + len; /* after this segment's data (a SYN takes one sequence number) */
    if (!th->urg && (s32)(seg_end - ss->approved_end) <= 0)
        return 1; /* every byte in it was approved (a retransmission, or the approved request itself) */
    u64 cgid = ss->cgid;
    struct pb_replica *r = replicas.lookup(&cgid);
    if (!r)
        return 1;
    u32 z = 0;
    struct pb_agent *a = agents.lookup(&r->agent);
    struct pb_knobs *kn = knobs.lookup(&z);
    if (!a || !kn)
        return 0;
    u8 decision = PB_ALLOW, reason = R_OBSERVE, flags = 0;
    s64 now = pb_now(kn, cgid), until = 0;
    if (a->mode == M_OBSERVE) {
        reason = R_OBSERVE;
    } else if (r->q_until > now) {
        decision = PB_DENY;
        reason = R_QUARANTINED;
    } else {
        reason = R_UNCLASSIFIABLE;
        decision = ss->reported ? (a->mode == M_ALERT ? PB_ALERT : PB_DENY) : pb_violation(a, r, now, &flags, &until);
    }
    if (!ss->reported) { /* one event per connection: the segment is retransmitted while it is dropped */
        ss->reported = 1;
        pb_count(K_FHIR, reason);
        struct pb_event *e = pb_reserve(cgid, K_FHIR, decision, reason, HOOK_UNSEEN);
        if (e) {
            __builtin_memset(e, 0, sizeof(*e));
            e->t = now;
            e->cgid = cgid;
            e->until = until;
            e->size = len;
            e->kind = K_FHIR;
            e->hook = HOOK_UNSEEN;
            e->decision = decision;
            e->reason = reason;
            e->shape = S_MALFORMED;
            e->flags = flags;
            pb_submit(e);
        }
    }
    return decision == PB_DENY ? 0 : 1;
}

/* cgroup_skb/ingress: a packet arriving at a listener inside a replica is a connection from
 * outside (a SYN, or the ACK that completes a SYN-cookie handshake, whose SYN-ACK leaves without
 * an owning socket and so never meets pb_unseen).  Replicas are clients: it is dropped, the first
 * time per peer as an egress violation (hook inbound), like the SYN-ACK above. */
int pb_ingress(struct __sk_buff *skb)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 1;
    sk = bpf_sk_fullsock(sk);
    if (!sk || sk->state != BPF_TCP_LISTEN)
        return 1; /* the common case: a packet for a connection the replica opened */
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct pb_addr_key ak = {};
    u32 off;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = data;
        if ((void *)(ip + 1) > end)
            return 0;
        off = (ip->ihl & 0xf) * 4;
        pb_addr4(&ak, ip->saddr, 0);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = data;
        if ((void *)(ip6 + 1) > end)
            return 0;
        off = sizeof(*ip6);
        __builtin_memcpy(ak.addr, &ip6->saddr, 16);
    } else {
        return 0;
    }
    struct tcphdr *th = data + (off & 0x3f);
    if ((void *)(th + 1) <= end)
        ak.port = th->source;
    return pb_inbound(skb, &ak); /* observe mode records it and lets it in */
}

/* ---------------------------------------------------------------- the request parser
 *
 * A state machine over the request head (enforcer/classify.py is the same grammar), defined
 * byte by byte (pb_target_byte, pb_line_byte) and run a token at a time where it can (pb_run:
 * up to 8 bytes of an id, a value, a name at once, the same state changes).  Its state lives in
 * the socket's storage, not in registers: the verifier then sees the same state at every step
 * and prunes, and a message is parsed in chunks of PB_CHUNK steps, each a tail call of pb_parse
 * (so each program stays within the verifier's limits).
 */
#define JMP_PARSE 0
#define JMP_DECIDE 1
#ifndef PB_CHUNK
#define PB_CHUNK 128  /* steps per tail call of pb_parse (the loader retries smaller if too complex) */
#endif
#ifndef PB_CHUNK0
#define PB_CHUNK0 128 /* steps the entry program takes itself */
#endif

#define ST_METHOD 0
#define ST_BASE 1
#define ST_AFTERBASE 2
#define ST_SEG0 3
#define ST_TYPE 4
#define ST_ID0 5
#define ST_ID 6
#define ST_AID0 7
#define ST_HIST 8
#define ST_VID0 9
#define ST_VID 10
#define ST_OP 11
#define ST_QNAME 12
#define ST_QVAL 13
#define ST_TSKIP 14
#define ST_VER 15
#define ST_VERLF 16
#define ST_HSTART 17
#define ST_HNAME 18
#define ST_HVAL 19
#define ST_HLF 20
#define ST_HEND 21
#define ST_JUNK 22

#define FORM_NONE 0
#define FORM_TYPE 1
#define FORM_ID 2
#define FORM_HIST 3
#define FORM_VREAD 4

#define W_GET 0x474554ULL
#define W_POST 0x504f5354ULL
#define W_PUT 0x505554ULL
#define W_DELETE 0x44454c455445ULL
#define W_HTTP11 0x485454502f312e31ULL
#define W_HISTORY 0x5f686973746f7279ULL /* "_history" */
#define W_GRAPHQL 0x6772617068716cULL   /* "graphql" */
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

#define SH1(c) do { s->k0 = (s->k0 << 8) | (c); } while (0)
#define SH2(c) do { s->k1 = (s->k1 << 8) | (s->k0 >> 56); SH1(c); } while (0)
#define SH3(c) do { s->k2 = (s->k2 << 8) | (s->k1 >> 56); SH2(c); } while (0)
#define SH5(c) do { s->k4 = (s->k4 << 8) | (s->k3 >> 56); s->k3 = (s->k3 << 8) | (s->k2 >> 56); SH3(c); } while (0)
#define CLR() do { s->k0 = 0; s->k1 = 0; s->k2 = 0; s->k3 = 0; s->k4 = 0; s->len = 0; } while (0)
#define DEV(_fam) do { s->fam = (_fam); s->st = ST_TSKIP; } while (0)
#define SYSFAM() (s->method == MT_POST ? S_BUNDLE : S_TYPE_PARAM)

/* a name's value in the name table (0: not there); see struct pb_ntab */
static __always_inline u16 pb_name_find(struct pb_ntab *nt, u8 tab, u32 len, u64 w0, u64 w1, u64 w2, u64 w3, u64 w4)
{
    u64 h = w0 ^ (w1 * NT_P1) ^ (w2 * NT_P2) ^ (w3 * NT_P3) ^ (w4 * NT_P4) ^ ((((u64)tab << 8) | len) * NT_P5);
    struct pb_name *e = &nt->e[(h * nt->mult) >> (64 - PB_NT_BITS)];
    if (e->tab == tab && e->len == len && e->w[0] == w0 && e->w[1] == w1 && e->w[2] == w2 && e->w[3] == w3 &&
        e->w[4] == w4)
        return e->val;
    return 0;
}

/* the resource type segment ended: look the name up (exactly, by its packed bytes) */
static __always_inline int pb_type_done(struct pb_pstate *s, struct pb_ntab *nt)
{
    u16 tid = (s->tbad || s->len > PB_TYPE_MAX) ? 0 :
              pb_name_find(nt, NT_TYPE, s->len, s->k0, s->k1, s->k2, s->k3, s->k4);
    if (!tid) {
        DEV(S_UNKNOWN_TYPE);
        return 0;
    }
    s->type_id = tid;
    s->form = FORM_TYPE;
    return 1;
}

/* the request target ended (SP) in state s->st */
static __always_inline void pb_target_end(struct pb_pstate *s, struct pb_ntab *nt)
{
    u8 st = s->st;
    if (st == ST_BASE) {
        s->fam = S_NOT_FHIR;
    } else if (st == ST_AFTERBASE || st == ST_SEG0) {
        s->fam = SYSFAM();
    } else if (st == ST_TYPE) {
        pb_type_done(s, nt);
    } else if (st == ST_ID0 || st == ST_AID0 || st == ST_VID0 || st == ST_QNAME) {
        s->fam = S_MALFORMED;
    } else if (st == ST_ID) {
        s->form = FORM_ID;
    } else if (st == ST_HIST) {
        if (s->len == 8 && s->k0 == W_HISTORY)
            s->form = FORM_HIST;
        else
            s->fam = S_MALFORMED;
    } else if (st == ST_VID) {
        s->form = FORM_VREAD;
    } else if (st == ST_OP) {
        s->fam = (s->len == 7 && s->k0 == W_GRAPHQL) ? S_GRAPHQL : S_OPERATION;
    }
    s->st = ST_VER;
    CLR();
}

/* the base path read so far: once it has fhir.base's length, it is the base or the target is not FHIR */
static __always_inline void pb_base_check(struct pb_pstate *s)
{
    if (s->len == s->blen) {
        if (s->k0 == s->bw0 && s->k1 == s->bw1 && s->k2 == s->bw2)
            s->st = ST_AFTERBASE;
        else
            DEV(S_NOT_FHIR);
    }
}

/* one byte c (class flags f) of the request target, not SP */
static __always_inline void pb_target_byte(struct pb_pstate *s, struct pb_ntab *nt, u8 c, u32 f)
{
    u8 st = s->st;
    if (st == ST_QNAME) {
        if (c == '%') {
            DEV(S_ENCODED);
        } else if (c == '=') {
            if (s->len == 0) {
                DEV(S_MALFORMED);
            } else {
                u32 nl = s->colon ? s->plen : s->len;
                u8 kd = nl > PB_NAME_MAX ? 0 :
                        pb_name_find(nt, NT_PARAM, nl, s->colon ? s->b0 : s->k0, s->colon ? s->b1 : s->k1, 0, 0, 0);
                if (kd == N_INCLUDE)
                    DEV(S_INCLUDE);
                else if (kd == N_TYPE)
                    DEV(S_TYPE_PARAM);
                else if (kd == N_HAS)
                    DEV(S_HAS);
                else if (s->dot)
                    DEV(S_CHAINED);
                else if (s->colon || kd != N_SAFE)
                    DEV(S_PARAM);
                else {
                    s->st = ST_QVAL;
                    s->len = 0;
                }
            }
        } else if (f & C_PNAME) {
            if (c == ':' && !s->colon) {
                s->colon = 1;
                s->b0 = s->k0;
                s->b1 = s->k1;
                s->plen = s->len;
            }
            if (c == '.')
                s->dot = 1;
            SH2(c);
            s->len++;
        } else {
            DEV(S_MALFORMED);
        }
    } else if (st == ST_QVAL) {
        if (c == '%' || c == '+') {
            DEV(S_ENCODED);
        } else if (f & C_VALUE) {
            s->len++;
            if (s->len > PB_VALUE_MAX)
                DEV(S_MALFORMED);
        } else if (c == '&') {
            s->st = ST_QNAME;
            CLR();
            s->colon = 0;
            s->dot = 0;
        } else {
            DEV(S_MALFORMED);
        }
    } else if (st == ST_BASE) {
        SH3(c);
        s->len++;
        pb_base_check(s);
    } else if (st == ST_AFTERBASE) {
        if (c == '/')
            s->st = ST_SEG0;
        else if (c == '?')
            DEV(SYSFAM());
        else
            DEV(S_NOT_FHIR);
    } else if (st == ST_SEG0) {
        if (c == '$') {
            s->st = ST_OP;
            CLR();
        } else if (c == '?') {
            DEV(SYSFAM());
        } else if (c == '%') {
            DEV(S_ENCODED);
        } else if (f & (C_UPPER | C_LOWER)) {
            s->st = ST_TYPE;
            CLR();
            SH1(c);
            s->len = 1;
        } else {
            DEV(S_MALFORMED);
        }
    } else if (st == ST_TYPE) {
        if (c == '%') {
            DEV(S_ENCODED);
        } else if (c == '/' || c == '?') {
            if (pb_type_done(s, nt)) {
                if (c == '/') {
                    s->st = ST_ID0;
                } else if (s->method == MT_GET) {
                    s->st = ST_QNAME;
                    CLR();
                    s->colon = 0;
                    s->dot = 0;
                } else {
                    DEV(S_PARAM);
                }
            }
        } else {
            if (!(f & (C_UPPER | C_LOWER)))
                s->tbad = 1;
            SH5(c);
            s->len++;
        }
    } else if (st == ST_ID0 || st == ST_VID0) {
        if (c == '$' && st == ST_ID0) {
            s->st = ST_OP;
            CLR();
        } else if (c == '%') {
            DEV(S_ENCODED);
        } else if (f & C_ID) {
            s->st = st == ST_ID0 ? ST_ID : ST_VID;
            s->len = 1;
        } else {
            DEV(S_MALFORMED);
        }
    } else if (st == ST_ID || st == ST_VID) {
        if (c == '%') {
            DEV(S_ENCODED);
        } else if (f & C_ID) {
            s->len++;
            if (s->len > PB_ID_MAX)
                DEV(S_MALFORMED);
        } else if (c == '/' || c == '?') {
            if (st == ST_ID) {
                s->form = FORM_ID;
                if (c == '/')
                    s->st = ST_AID0;
                else
                    DEV(S_PARAM);
            } else {
                s->form = FORM_VREAD;
                DEV(c == '?' ? S_PARAM : S_MALFORMED);
            }
        } else {
            DEV(S_MALFORMED);
        }
    } else if (st == ST_AID0) {
        if (c == '$') {
            s->st = ST_OP;
            CLR();
        } else if (c == '_') {
            s->st = ST_HIST;
            CLR();
            SH1(c);
            s->len = 1;
        } else if (c == '%') {
            DEV(S_ENCODED);
        } else if (f & (C_UPPER | C_LOWER)) {
            DEV(S_COMPARTMENT);
        } else {
            DEV(S_MALFORMED);
        }
    } else if (st == ST_HIST) {
        if (c == '%') {
            DEV(S_ENCODED);
        } else if (c == '/' || c == '?') {
            if (s->len == 8 && s->k0 == W_HISTORY) {
                s->form = FORM_HIST;
                if (c == '/')
                    s->st = ST_VID0;
                else
                    DEV(S_PARAM);
            } else {
                DEV(S_MALFORMED);
            }
        } else {
            SH1(c);
            s->len++;
        }
    } else if (st == ST_OP) {
        if (c == '%') {
            DEV(S_ENCODED);
        } else if (c == '/' || c == '?') {
            DEV((s->len == 7 && s->k0 == W_GRAPHQL) ? S_GRAPHQL : S_OPERATION);
        } else if (f & C_OP) {
            SH1((f & C_UPPER) ? (c | 0x20) : c);
            s->len++;
        } else {
            DEV(S_MALFORMED);
        }
    }
}

/* one byte of a header value (kind s->hkind), not CR */
static __always_inline void pb_value_byte(struct pb_pstate *s, u8 c, u32 f)
{
    u8 sub = s->sub;
    if (s->hkind == H_CONTENT_LENGTH) {
        if (sub == 0) {
            if (f & C_DIGIT) {
                s->sub = 1;
                s->cl_cur = c - '0';
                s->len = 1;
            } else if (!(f & C_OWS)) {
                s->sub = 3;
                s->cl_bad = 1;
            }
        } else if (sub == 1) {
            if ((f & C_DIGIT) && s->len < 9) {
                s->cl_cur = s->cl_cur * 10 + (c - '0');
                s->len++;
            } else if (f & C_OWS) {
                s->sub = 2;
            } else {
                s->sub = 3;
                s->cl_bad = 1;
            }
        } else if (sub == 2 && !(f & C_OWS)) {
            s->sub = 3;
            s->cl_bad = 1;
        }
    } else if (s->hkind == H_CLAIM) {
        if (sub == 0) {
            if (f & C_CLAIM) {
                s->sub = 1;
                s->claim = (s->claim ^ c) * FNV_PRIME;
                s->len = 1;
            } else if (!(f & C_OWS)) {
                s->sub = 3;
                s->claim_bad = 1;
            }
        } else if (sub == 1) {
            if ((f & C_CLAIM) && s->len < PB_CLAIM_MAX) {
                s->claim = (s->claim ^ c) * FNV_PRIME;
                s->len++;
            } else if (f & C_OWS) {
                s->sub = 2;
            } else {
                s->sub = 3;
                s->claim_bad = 1;
            }
        } else if (sub == 2 && !(f & C_OWS)) {
            s->sub = 3;
            s->claim_bad = 1;
        }
    }
}

/* one byte outside the request target */
static __always_inline void pb_line_byte(struct pb_pstate *s, struct pb_ntab *nt, u8 c, u32 f)
{
    u8 st = s->st;
    if (st == ST_HVAL) {
        if (c == '\r') {
            if (s->hkind == H_CONTENT_LENGTH) {
                if (s->sub == 0)
                    s->cl_bad = 1;
                else if (s->sub < 3)
                    s->cl_val = s->cl_cur;
            } else if (s->hkind == H_CLAIM && s->sub == 0) {
                s->claim_bad = 1;
            }
            s->st = ST_HLF;
        } else if (!(f & C_HVAL)) {
            s->st = ST_JUNK;
        } else {
            pb_value_byte(s, c, f);
        }
    } else if (st == ST_HNAME) {
        if (c == ':') {
            u8 hkind = s->len > PB_HNAME_MAX ? 0 : pb_name_find(nt, NT_HEADER, s->len, s->k0, s->k1, s->k2, 0, 0);
            s->hkind = hkind;
            if (hkind == H_CONTENT_LENGTH)
                s->n_cl++;
            else if (hkind == H_TRANSFER_ENCODING)
                s->te = 1;
            else if (hkind == H_OVERRIDE)
                s->ovr = 1;
            else if (hkind == H_CLAIM)
                s->n_claim++;
            s->sub = 0;
            s->cl_cur = 0;
            s->len = 0;
            s->st = ST_HVAL;
        } else if (f & C_TCHAR) {
            SH3((f & C_UPPER) ? (c | 0x20) : c);
            s->len++;
        } else {
            s->st = ST_JUNK;
        }
    } else if (st == ST_HSTART) {
        if (c == '\r') {
            s->st = ST_HEND;
        } else if (f & C_TCHAR) {
            s->st = ST_HNAME;
            CLR();
            SH1((f & C_UPPER) ? (c | 0x20) : c);
            s->len = 1;
        } else {
            s->st = ST_JUNK;
        }
    } else if (st == ST_VERLF || st == ST_HLF) {
        s->st = c == '\n' ? ST_HSTART : ST_JUNK;
    } else if (st == ST_METHOD) {
        if (c == ' ') {
            u64 m = s->k0;
            u32 l = s->len;
            u8 method = (m == W_GET && l == 3) ? MT_GET : (m == W_POST && l == 4) ? MT_POST :
                        (m == W_PUT && l == 3) ? MT_PUT : (m == W_DELETE && l == 6) ? MT_DELETE : MT_NONE;
            s->method = method;
            if (method == MT_NONE) {
                s->st = ST_JUNK;
            } else {
                s->st = ST_BASE;
                CLR();
            }
        } else if ((f & C_UPPER) && s->len < 7) {
            SH1(c);
            s->len++;
        } else {
            s->st = ST_JUNK;
        }
    } else if (st == ST_VER) {
        if (c == '\r')
            s->st = (s->len == 8 && s->k0 == W_HTTP11) ? ST_VERLF : ST_JUNK;
        else if ((f & C_VCHAR) && s->len < 8) {
            SH1(c);
            s->len++;
        } else
            s->st = ST_JUNK;
    } else {
        s->st = ST_JUNK; /* ST_HEND followed by anything but LF */
    }
}

#define HIGHS 0x8080808080808080ULL
#define ONES 0x0101010101010101ULL

/* n (1..8) bytes into a shift-register word: v shifted left by n bytes, and v's top n bytes */
#define SHLN(v, n) (((v) << (8 * (n) - 1)) << 1)
#define TOPN(v, n) ((v) >> (64 - 8 * (n)))
#define SH1N(b, n) do { s->k0 = SHLN(s->k0, n) | (b); } while (0)
#define SH2N(b, n) do { s->k1 = SHLN(s->k1, n) | TOPN(s->k0, n); SH1N(b, n); } while (0)
#define SH3N(b, n) do { s->k2 = SHLN(s->k2, n) | TOPN(s->k1, n); SH2N(b, n); } while (0)
#define SH5N(b, n) do { s->k4 = SHLN(s->k4, n) | TOPN(s->k3, n); s->k3 = SHLN(s->k3, n) | TOPN(s->k2, n); \
                        SH3N(b, n); } while (0)

/* Byte classes of 8 bytes at once (SWAR).  y is x with each byte's top bit cleared, so adding a
 * constant below 0x80 to y never carries from one byte into the next; IN(y, lo, hi) has 0x80 in
 * each byte in [lo, hi] (1 <= lo <= hi <= 0x7f).  Bytes >= 0x80 are in no class (pb_run). */
#define GE(y, v) ((y) + (0x80 - (v)) * ONES)
#define IN(y, lo, hi) (GE(y, lo) & ~GE(y, (hi) + 1) & HIGHS)
#define ALPHA(y) IN((y) | (0x20 * ONES), 'a', 'z') /* A-Z a-z: | 0x20 maps only letters to a-z */
#define ALNUM(y) (ALPHA(y) | IN(y, '0', '9'))

/* the index of the first byte with its top bit set in out (out != 0): that bit alone, moved to
 * bit 8j, times 0x0001020304050607 has j in the top byte (a shift: no carries) */
#define FIRST(out) (((((out) & -(out)) >> 7) * 0x0001020304050607ULL) >> 56)

/* A run: the next bytes of the current token, up to 8 (x, little-endian: first byte lowest) at
 * once.  Each state's run class holds only bytes its byte path consumes without a transition or
 * a check (no delimiter, no CR/LF, no SP in the target; a subset of the class its byte path reads
 * from ctab), and the limit stops a run where the byte path would start checking a length, so a
 * run leaves the state the byte path would have left, byte for byte (w aside: no CR/LF in a run,
 * so the head cannot end in it and w restarts).  A state that only starts a token (HSTART, SEG0,
 * ID0, VID0) enters the token's state for a run of at least one byte, as its byte path would on
 * the first byte.  A header value or the version that ends in CR LF within x takes the CR LF too:
 * the byte path would go to HLF/VERLF and on LF to HSTART (or to JUNK for a bad version; w then
 * holds CR LF and no byte before them can complete CR LF CR LF).  Returns the bytes consumed (0:
 * the byte path takes the next byte). */
static __always_inline u32 pb_run(struct pb_pstate *s, u64 x)
{
    u8 st = s->st;
    u64 y = x & ~HIGHS, in;
    u32 lim = 8, len = s->len;
    if (st == ST_HVAL) {
        if (s->hkind == H_CONTENT_LENGTH || s->hkind == H_CLAIM)
            return 0;
        in = IN(y, 0x20, 0x7e) | IN(y, '\t', '\t');
    } else if (st == ST_QVAL) { /* ,-./0-9: are one range */
        in = ALPHA(y) | IN(y, ',', ':') | IN(y, '_', '_') | IN(y, '|', '|');
        lim = len < PB_VALUE_MAX ? PB_VALUE_MAX - len : 0;
    } else if (st == ST_ID || st == ST_VID || st == ST_ID0 || st == ST_VID0) {
        in = ALNUM(y) | IN(y, '-', '-');
        if (st == ST_ID0 || st == ST_VID0)
            len = 0;
        lim = len < PB_ID_MAX ? PB_ID_MAX - len : 0;
    } else if (st == ST_HNAME || st == ST_HSTART) { /* the usual name bytes; other tchars: byte path */
        in = ALNUM(y) | IN(y, '-', '-');
    } else if (st == ST_QNAME || st == ST_HIST || st == ST_OP) { /* not ':' '.' '%' '=' '/' '?' */
        in = ALNUM(y) | IN(y, '-', '-') | IN(y, '_', '_');
    } else if (st == ST_TYPE || st == ST_SEG0) {
        in = ALPHA(y);
    } else if (st == ST_BASE || st == ST_TSKIP || st == ST_VER) {
        in = IN(y, 0x21, 0x7e);
        if (st == ST_BASE)
            lim = len < s->blen ? s->blen - len : 0;
        else if (st == ST_VER)
            lim = len < 8 ? 8 - len : 0;
    } else if (st == ST_JUNK) {
        in = IN(y, 0x20, 0x7e) | IN(y, '\t', '\t');
    } else if (st == ST_METHOD) {
        in = IN(y, 'A', 'Z');
        lim = len < 7 ? 7 - len : 0;
    } else {
        return 0;
    }
    u64 out = (x | ~in) & HIGHS; /* 0x80 in each byte not in the class */
    u32 n = out ? FIRST(out) : 8;
    if (n > lim)
        n = lim;
    /* CR LF right after a header value or the version (n <= 6: both in x) */
    u32 crlf = (st == ST_HVAL || st == ST_VER) && n <= 6 && ((x >> (8 * n)) & 0xffff) == 0x0a0d;
    if (n == 0 && !crlf)
        return 0;
    if (st == ST_HSTART || st == ST_SEG0) { /* a header name / type name starts */
        CLR();
        len = 0;
        st = st == ST_HSTART ? ST_HNAME : ST_TYPE;
        s->st = st;
    } else if (st == ST_ID0 || st == ST_VID0) {
        st = st == ST_ID0 ? ST_ID : ST_VID;
        s->st = st;
    }
    if (st == ST_HNAME || st == ST_OP) /* these names are compared lower-cased: A-Z | 0x20 */
        x |= IN(y, 'A', 'Z') >> 2;
    if (n) {
        u64 b = TOPN(__builtin_bswap64(x), n); /* the run's bytes, first one most significant */
        if (st == ST_TYPE)
            SH5N(b, n);
        else if (st == ST_HNAME || st == ST_BASE)
            SH3N(b, n);
        else if (st == ST_QNAME)
            SH2N(b, n);
        else if (st == ST_METHOD || st == ST_VER || st == ST_HIST || st == ST_OP)
            SH1N(b, n);
        s->len = len + n;
        if (st >= ST_BASE && st <= ST_TSKIP)
            s->tlen += n;
        if (st == ST_BASE)
            pb_base_check(s);
    }
    if (crlf) {
        s->st = (st == ST_HVAL || (s->len == 8 && s->k0 == W_HTTP11)) ? ST_HSTART : ST_JUNK;
        s->w = 0x0d0a;
        n += 2;
    } else {
        s->w = 0;
    }
    return n;
}

/* Scan the message from s->pos for at most `iters` steps (a run and the byte that ends it, or one
 * byte, each).  Sets s->done when the head ended (s->head_end), the data ended, or PB_HDR_MAX
 * bytes were seen; otherwise the next tail call continues.  Everything the next step needs is in
 * memory (s), not in registers, so the verifier sees one state per step. */
static __always_inline void pb_scan(struct sk_msg_md *msg, struct pb_pstate *s, struct pb_ctab *ct, struct pb_ntab *nt,
                                    const u32 iters)
{
    void *data = (void *)(long)msg->data;
    void *end = (void *)(long)msg->data_end;
    for (u32 it = 0; it < iters; it++) {
        asm volatile("" ::: "memory"); /* keep the state in memory (see above) */
        u32 i = s->pos;
        if (i >= PB_HDR_MAX) {
            s->done = 1;
            break;
        }
        u8 *p = data + i;
        if ((void *)(p + 1) > end) {
            s->done = 1;
            break;
        }
        u8 c;
        if (i + 8 <= PB_HDR_MAX && (void *)(p + 8) <= end) {
            u64 x = *(u64 *)p;
            u32 n = pb_run(s, x);
            if (n >= 8) {
                s->pos = i + n;
                continue;
            }
            i += n; /* the byte that ended the run: the byte path takes it in the same step */
            c = (x >> (8 * n)) & 0xff;
        } else {
            c = *p;
        }
        s->pos = i + 1;
        u32 w = (s->w << 8) | c;
        s->w = w;
        if (w == 0x0d0a0d0a) {
            s->head_end = i + 1;
            s->done = 1;
            break;
        }
        u32 f = ct->c[c];
        u8 st = s->st;
        if (st == ST_JUNK)
            continue;
        if (st >= ST_BASE && st <= ST_TSKIP) {
            if (c == ' ') {
                if (s->tlen == 0)
                    s->st = ST_JUNK;
                else
                    pb_target_end(s, nt);
            } else if (!(f & C_VCHAR)) {
                s->st = ST_JUNK;
            } else {
                s->tlen++;
                if (st != ST_TSKIP)
                    pb_target_byte(s, nt, c, f);
            }
        } else {
            pb_line_byte(s, nt, c, f);
        }
    }
    if (!s->done && s->pos >= PB_HDR_MAX)
        s->done = 1;
}

int pb_parse(struct sk_msg_md *msg)
{
    u32 z = 0;
    struct pb_sock *ss = sockstate.sk_storage_get(msg->sk, 0, 0);
    struct pb_ctab *ct = ctab.lookup(&z);
    struct pb_ntab *nt = ntab.lookup(&z);
    if (!ss || !ct || !nt)
        return SK_DROP;
    if (!ss->ps.done)
        pb_scan(msg, &ss->ps, ct, nt, PB_CHUNK);
    if (!ss->ps.done)
        jmp.call(msg, JMP_PARSE);
    jmp.call(msg, JMP_DECIDE);
    return SK_DROP;
}

/* the parser's verdict on the message (classify.classify's last steps) */
static __always_inline void pb_result(struct pb_pstate *s, struct pb_parsed *out)
{
    __builtin_memset(out, 0, sizeof(*out));
    if (s->desync) {
        out->shape = s->desync == PB_NOT_CONNECTED ? S_MALFORMED : s->desync;
        return;
    }
    if (s->cont) {
        out->shape = S_PIPELINED;
        return;
    }
    if (!s->head_end) {
        out->shape = s->size >= PB_HDR_MAX ? S_TOO_LARGE : S_SPLIT;
        return;
    }
    if (s->st != ST_HEND || s->n_claim > 1 || s->claim_bad) {
        out->shape = S_MALFORMED;
        return;
    }
    u8 method = s->method, form = s->form;
    u32 cl = (s->n_cl == 1 && !s->cl_bad) ? s->cl_val : 0;
    u32 rest = s->size - s->head_end;
    u8 shape = S_PLAIN;
    if (s->ovr)
        shape = S_METHOD_OVERRIDE;
    else if (s->te)
        shape = S_CHUNKED;
    else if (s->n_cl > 1 || s->cl_bad || ((method == MT_POST || method == MT_PUT) && s->n_cl == 0) ||
             ((method == MT_GET || method == MT_DELETE) && cl != 0))
        shape = S_LENGTH;
    else if (rest > cl)
        shape = S_PIPELINED;
    else if (s->fam)
        shape = s->fam;
    else if (!((method == MT_GET && form != FORM_NONE) || (method == MT_POST && form == FORM_TYPE) ||
               ((method == MT_PUT || method == MT_DELETE) && form == FORM_ID)))
        shape = S_MALFORMED;
    out->shape = shape;
    out->method = method;
    if (s->n_claim) {
        out->has_claim = 1;
        out->claim = s->claim;
    }
    if (shape == S_MALFORMED)
        return;
    u16 type_id = s->type_id;
    out->type_id = type_id;
    if (type_id) {
        if (method == MT_GET)
            out->interaction = form == FORM_TYPE ? I_SEARCH : form == FORM_ID ? I_READ :
                               form == FORM_HIST ? I_HISTORY : I_VREAD;
        else
            out->interaction = method == MT_POST ? I_CREATE : method == MT_PUT ? I_UPDATE : I_DELETE;
    }
    out->body_len = cl;
}

/* ---------------------------------------------------------------- sk_msg: entry and decision */

/* Is this message the agent's FHIR traffic (to its policy's fhir.server)? */
static __always_inline int pb_is_server(struct sk_msg_md *msg, struct pb_agent *a)
{
    u32 fam = CTX32(msg->family), v4 = CTX32(msg->remote_ip4);
    u32 ip0 = CTX32(msg->remote_ip6[0]), ip1 = CTX32(msg->remote_ip6[1]);
    u32 ip2 = CTX32(msg->remote_ip6[2]), ip3 = CTX32(msg->remote_ip6[3]);
    u16 port = (u16)(CTX32(msg->remote_port) >> 16);
    if (fam == AF_INET) {
        ip0 = 0;
        ip1 = 0;
        ip2 = bpf_htonl(0x0000ffff);
        ip3 = v4;
    }
    return port == a->server_port && ip0 == a->server_addr[0] && ip1 == a->server_addr[1] &&
           ip2 == a->server_addr[2] && ip3 == a->server_addr[3];
}

/* An approved message leaves by a redirect to its own socket's egress, never SK_PASS: when a
 * send fails part-way (a short send: a full send buffer on a non-blocking socket, a timeout, a
 * signal), tcp_bpf keeps a *pass* verdict on the socket and hands the next message to TCP without
 * running the program; its redirect path forgets the verdict before it sends. */
static __always_inline int pb_allow(struct sk_msg_md *msg, struct pb_sock *ss)
{
    if (!ss || !ss->cookie)
        return SK_DROP;
    u64 key = ss->cookie;
    return fhir_socks.msg_redirect_hash(msg, &key, 0);
}

/* The message [w, w + size) is approved: the stream's next approved byte is after it, and the
 * backstop lets exactly these bytes leave.  head: it starts a request whose head takes head_len
 * bytes and announces body_len more (which may follow in later messages). */
static __always_inline void pb_commit(struct pb_sock *ss, u32 w, u32 size, u8 head, u32 head_len, u32 body_len)
{
    ss->writer = bpf_get_current_pid_tgid();
    ss->msg_start = w;
    ss->next_seq = w + size;
    ss->approved_end = w + size;
    if (head) {
        ss->head_end = w + head_len;
        ss->body_end = w + head_len + body_len;
    }
}

/* The decision on the parsed message (docs/enforcement.md, step 5 and 6), its event, its verdict. */
static __always_inline int pb_finish(struct sk_msg_md *msg, struct pb_replica *r, struct pb_agent *a,
                                     struct pb_knobs *k, struct pb_sock *ss)
{
    struct pb_parsed c;
    struct pb_pstate *s = &ss->ps;
    pb_result(s, &c);
    u64 cgid = s->cgid;
    u32 size = s->size, w = s->wseq;
    u8 flags = s->cont ? F_CONTINUATION : 0;
    s64 now = pb_now(k, cgid);
    u8 decision = PB_ALLOW, reason = R_OK;
    s64 until = 0;
    if (c.has_claim)
        flags |= F_CLAIM;
    if (a->mode == M_OBSERVE) {
        reason = R_OBSERVE;
    } else if (r->q_until > now) {
        decision = PB_DENY;
        reason = R_QUARANTINED;
    } else if (s->desync == PB_NOT_CONNECTED) {
        decision = PB_DENY; /* refused, not a violation: the connection is not established */
        reason = R_UNCLASSIFIABLE;
        flags |= F_REFUSED;
    } else {
        u8 v = 0, via_lane = 0;
        if (s->desync) {
            v = R_UNCLASSIFIABLE; /* never allowed by allow_shapes: the bytes cannot be placed */
            flags |= F_DESYNC;
        } else if (c.shape != S_PLAIN && !(a->allow_shapes & (1u << (c.shape & 31)))) {
            v = R_UNCLASSIFIABLE;
        } else {
            u32 bit = (u32)c.type_id * 8 + c.interaction, word = bit >> 6;
            BARRIER_VAR(word); /* bound the index itself (clang would merge the shifts past the check) */
            if (!c.type_id || word >= PB_ALLOW_WORDS || !((a->allow[word] >> (bit & 63)) & 1)) {
                v = R_TYPE;
                if (c.type_id && c.has_claim) { /* a lane may allow it: the pair's lane bits */
                    u32 mk = 0;
                    struct pb_pair_key pk = {};
                    pk.agent = r->agent;
                    pk.type_id = c.type_id;
                    pk.interaction = c.interaction;
                    u32 *mask = pairs.lookup(&pk);
                    if (mask)
                        mk = *mask;
                    struct pb_lane_key lk = {};
                    lk.cgid = cgid;
                    lk.claim = c.claim;
                    struct pb_lane *ln = lanes.lookup(&lk);
                    if (ln && ln->cls < 31 && (mk & (2u << ln->cls))) {
                        v = now < ln->expiry ? 0 : R_LANE_EXPIRED;
                        via_lane = v == 0;
                    }
                }
            }
            if (!v && a->interval) {
                /* GCRA, T = interval, tau = (burst-1)*T; compare-and-swap against concurrent senders */
                u8 done = 0;
                for (int tries = 0; tries < 4 && !done && !v; tries++) {
                    s64 old = r->tat;
                    s64 x = old > now ? old : now;
                    if (x - now > a->tau)
                        v = R_RATE;
                    else if (__sync_val_compare_and_swap(&r->tat, old, x + a->interval) == old)
                        done = 1;
                }
                if (!done)
                    v = R_RATE;
            }
        }
        if (v) {
            reason = v;
            decision = pb_violation(a, r, now, &flags, &until);
        } else if (via_lane) {
            reason = R_LANE;
        }
    }
    if (decision != PB_DENY) {
        if (s->cont || s->desync) /* allowed anyway (alert, observe): no body expected after it */
            pb_commit(ss, w, size, 1, size, 0);
        else
            pb_commit(ss, w, size, 1, s->head_end, c.body_len);
    }
    pb_count(K_FHIR, reason);
    if (k->record_all || decision != PB_ALLOW || a->mode == M_OBSERVE || reason == R_LANE ||
        (flags & (F_QUARANTINE | F_KILL))) {
        struct pb_event *e = pb_reserve(cgid, K_FHIR, decision, reason, HOOK_SK_MSG);
        if (e) {
            __builtin_memset(e, 0, sizeof(*e));
            e->t = now;
            e->cgid = cgid;
            e->claim = c.claim;
            e->until = until;
            e->size = size;
            e->type_id = c.type_id;
            e->kind = K_FHIR;
            e->hook = HOOK_SK_MSG;
            e->decision = decision;
            e->reason = reason;
            e->shape = c.shape;
            e->interaction = c.interaction;
            e->method = c.method;
            e->flags = flags;
            pb_submit(e);
        }
    }
    return decision == PB_DENY ? SK_DROP : pb_allow(msg, ss);
}

/* Where the message sits in the connection's byte stream, before anything is parsed.  Sets
 * s->desync when it cannot be placed: no state for the connection, or the stream is not where the
 * approved bytes left it.  One case is put right instead: the last approved message went out short
 * (tcp_bpf returned a short count) and the same thread sends again, so no push of it can still be
 * under way; if its head is complete the stream simply continues with its body (or a new request)
 * at the new position.  A short head, another thread, or bytes beyond what was approved cannot be
 * placed: the message is denied and the connection is lost (tcp_bpf keeps the drop). */
static __always_inline void pb_place(struct sk_msg_md *msg, struct pb_sock *ss, struct pb_pstate *s)
{
    struct bpf_sock *sk = msg->sk;
    u32 w = 0;
    if (!sk || sk->state != 1 /* TCP_ESTABLISHED */) {
        s->desync = PB_NOT_CONNECTED;
        return;
    }
    if (!ss->conn || !pb_write_seq(sk, &w)) {
        s->desync = S_MALFORMED;
        return;
    }
    s->wseq = w;
    if (w == ss->next_seq)
        return;
    u8 mine = bpf_get_current_pid_tgid() == ss->writer;
    u8 short_send = mine && (s32)(w - ss->msg_start) >= 0 && (s32)(ss->next_seq - w) > 0;
    if (short_send && (s32)(w - ss->head_end) >= 0) {
        ss->next_seq = w;
        ss->approved_end = w;
        return;
    }
    s->desync = short_send ? S_SPLIT : S_MALFORMED;
}

int pb_sk_msg(struct sk_msg_md *msg)
{
    struct pb_sock *ss = sockstate.sk_storage_get(msg->sk, 0, 0);
    /* The replica: the connection's own (its cgroup when its SYN left), so a socket handed to a
     * process outside the replica stays the replica's; else the sender's. */
    u64 cgid = (ss && ss->conn) ? ss->cgid : bpf_get_current_cgroup_id();
    struct pb_replica *r = replicas.lookup(&cgid);
    if (!r)
        return SK_PASS; /* not a paritybed replica: unenforced */
    u32 z = 0;
    struct pb_agent *a = agents.lookup(&r->agent);
    struct pb_knobs *k = knobs.lookup(&z);
    struct pb_ctab *ct = ctab.lookup(&z);
    struct pb_ntab *nt = ntab.lookup(&z);
    if (!a || !k || !ct || !nt)
        return SK_DROP;
    if (!pb_is_server(msg, a))
        return ss ? pb_allow(msg, ss) : SK_PASS; /* not FHIR traffic (the egress hooks decided it) */
    if (!ss)
        ss = sockstate.sk_storage_get(msg->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!ss)
        return SK_DROP;
    u32 size = msg->size;
    struct pb_pstate *s = &ss->ps;
    __builtin_memset(s, 0, sizeof(*s));
    s->size = size;
    s->cgid = cgid;
    pb_place(msg, ss, s);
    if (s->desync)
        return pb_finish(msg, r, a, k, ss);
    u32 w = s->wseq;
    if ((s32)(ss->body_end - w) > 0) { /* the body of the last approved request goes on */
        if (size <= ss->body_end - w) {
            pb_commit(ss, w, size, 0, 0, 0);
            return pb_allow(msg, ss);
        }
        s->cont = 1;
        return pb_finish(msg, r, a, k, ss);
    }
    s->claim = FNV_OFFSET;
    s->bw0 = a->base_w[0];
    s->bw1 = a->base_w[1];
    s->bw2 = a->base_w[2];
    s->blen = a->base_len;
    u32 n = size < PB_HDR_MAX ? size : PB_HDR_MAX;
    if ((void *)(long)msg->data + n > (void *)(long)msg->data_end) /* not in one piece already */
        bpf_msg_pull_data(msg, 0, n, 0);
    pb_scan(msg, s, ct, nt, PB_CHUNK0); /* the first chunk here: most heads end in it, no tail call */
    if (!s->done) {
        jmp.call(msg, JMP_PARSE);
        return SK_DROP; /* tail call missing: fail closed */
    }
    return pb_finish(msg, r, a, k, ss);
}

int pb_decide(struct sk_msg_md *msg)
{
    u32 z = 0;
    struct pb_knobs *k = knobs.lookup(&z);
    struct pb_sock *ss = sockstate.sk_storage_get(msg->sk, 0, 0);
    if (!k || !ss)
        return SK_DROP;
    u64 cgid = ss->ps.cgid;
    struct pb_replica *r = replicas.lookup(&cgid);
    if (!r)
        return SK_DROP;
    struct pb_agent *a = agents.lookup(&r->agent);
    if (!a)
        return SK_DROP;
    return pb_finish(msg, r, a, k, ss);
}
