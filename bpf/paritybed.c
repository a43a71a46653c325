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
/* the packet headers from uapi: the kernel-internal ip.h, ipv6.h and tcp.h pull in most of the
 * socket layer, which BCC parses at every load (about 0.5 s of it; the programs are the same) */
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
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
PB_MAP("array", u32, struct pb_agent, agents, PB_AGENTS * 2);  /* two entries per agent slot (pb_agent_of) */
PB_MAP("array", u32, u32, agent_live, PB_AGENTS);  /* which of a slot's two entries is in force */
PB_MAP("array", u32, struct pb_replica, replicas, PB_REPLICAS);
PB_MAP("hash", u64, u32, replica_ids, PB_REPLICAS);  /* cgroup id -> its entry in replicas */
PB_MAP("array", u32, u64, releases, PB_REPLICAS);  /* per replicas entry: the releases asked (a count; pb_release_pending) */
PB_MAP("hash", struct pb_class_key, struct pb_pairs, lanebits, 4096);
PB_MAP("hash", struct pb_lane_key, struct pb_lane, lanes, 16384);
PB_MAP("hash", struct pb_ctx_key, struct pb_ctx, contexts, 65536);
PB_MAP("hash", struct pb_pat_key, s64, seenpat, 262144);
PB_MAP("hash", struct pb_addr_key, struct pb_endpoint, registry, 4096);
PB_MAP("hash", struct pb_envelope_key, u8, envelope, 4096);
PB_MAP("lru_hash", struct pb_seen_key, u8, seen, 65536);
PB_MAP("hash", struct pb_addr_key, u8, servers, 256);
PB_MAP("hash", u64, s64, vclock, 4096);  /* virtual clock of one replica (cgroup id), over knobs.vnow */
PB_MAP("array", u32, struct pb_ntab, ntab, 1);
PB_MAP("array", u32, struct pb_tables, tabs, 1);
PB_MAP("percpu_array", u32, u64, counters, PB_COUNTERS);
PB_MAP("array", u32, u64, lost, 1);
PB_MAP("hash", struct pb_lost_key, u64, lost_by, 4096);
PB_SOCKHASH(fhir_socks, u64, 65536);
PB_SK_STORAGE(sockstate, struct pb_sock);
PB_RINGBUF(events, PB_RB_PAGES);          /* FHIR decisions (sk_msg, the backstop) */
PB_RINGBUF(egress_events, PB_RB_PAGES);   /* egress, refusals, inbound: a flood of these cannot
                                           * push a FHIR decision out */
PB_MAP("prog", u32, u32, jmp, 4);  /* tail calls: JMP_LINE, JMP_HEAD, JMP_DECIDE */

/* ---------------------------------------------------------------- common */

/* The agent of replica r: the entry in force of its agent slot.  Both maps are arrays, so the
 * lookups are a bounds check and an offset (no hash): the control plane writes a new policy into
 * the slot's other entry and then switches agent_live, so a decision never reads an entry being
 * written.  An entry whose key is not the replica's agent (a slot freed or given to another
 * agent) is no agent: the caller fails closed, as for a missing agent. */
static __always_inline struct pb_agent *pb_agent_of(struct pb_replica *r)
{
    u32 i = r->slot;
    if (i >= PB_AGENTS)
        return 0;
    u32 *live = agent_live.lookup(&i);
    if (!live)
        return 0;
    u32 j = i * 2 + (*live & 1);
    struct pb_agent *a = agents.lookup(&j);
    return a && a->key == r->agent ? a : 0;
}

/* The replica whose cgroup is cgid (0: not a paritybed replica), and its entry in replicas (*slot).
 * The entry must name cgid: one freed or given to another replica since is no replica. */
static __always_inline struct pb_replica *pb_replica_slot(u64 cgid, u32 *slot)
{
    u32 *i = replica_ids.lookup(&cgid);
    if (!i)
        return 0;
    u32 j = *i;
    struct pb_replica *r = replicas.lookup(&j);
    if (!r || r->cgid != cgid)
        return 0;
    *slot = j;
    return r;
}

static __always_inline struct pb_replica *pb_replica_of(u64 cgid)
{
    u32 j;
    return pb_replica_slot(cgid, &j);
}

/* The replica of a connection (cgroup id cgid): the entry its socket storage keeps, found without
 * a hash lookup (the decision's hot path), or by cgid when that entry no longer names it. */
static __always_inline struct pb_replica *pb_replica_at(u32 slot, u64 cgid)
{
    struct pb_replica *r = replicas.lookup(&slot);
    if (r && r->cgid == cgid)
        return r;
    return pb_replica_of(cgid);
}

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

/* A release the control plane asked for (it counts them in releases[entry]) is applied here, by
 * the kernel: the control plane never writes a replica's entry after registering it, so it cannot
 * overwrite what the kernel wrote meanwhile (tat, np_tat, seen_n, a new quarantine).  The
 * compare-and-swap lets one of the replica's concurrent decisions apply it. */
static __always_inline void pb_release_pending(struct pb_replica *r)
{
    u32 i = r->entry;
    u64 *asked = releases.lookup(&i);
    if (!asked)
        return;
    u64 seen = r->rel_seen, want = *asked;
    if (want != seen && __sync_val_compare_and_swap(&r->rel_seen, seen, want) == seen)
        r->q_until = -1;
}

/* quarantined (or, after a kill, blocked from respawning) at now.  A release matters only to a
 * replica held: one asked while it was not is applied before its next quarantine (pb_violation),
 * so an allowed decision makes no lookup for it. */
static __always_inline int pb_held(struct pb_replica *r, s64 now)
{
    if (r->q_until <= now)
        return 0;
    pb_release_pending(r);
    return r->q_until > now;
}

/* A violation becomes a decision by the agent's response mode (docs/enforcement.md, step 6). */
static __always_inline u8 pb_violation(struct pb_agent *a, struct pb_replica *r, s64 now, u8 *flags, s64 *until)
{
    if (a->mode == M_ALERT)
        return PB_ALERT;
    if (a->mode >= M_QUARANTINE) {
        pb_release_pending(r); /* a release asked before this violation lifts the quarantine before it, not this one */
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
    struct pb_replica *r = pb_replica_of(cgid);
    if (!r)
        return 1; /* not a paritybed replica: unenforced */
    u32 z = 0;
    struct pb_agent *a = pb_agent_of(r);
    struct pb_knobs *k = knobs.lookup(&z);
    if (!a || !k)
        return 0; /* a registered replica without its policy: fail closed */
    s64 now = pb_now(k, cgid);
    u8 decision = PB_ALLOW, reason = R_OK, flags = 0;
    s64 until = 0;
    struct pb_endpoint *ep = registry.lookup(ak);
    if (a->mode != M_OBSERVE && pb_held(r, now)) {
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
    struct pb_replica *r = pb_replica_of(cgid);
    if (!r)
        return 1;
    u32 z = 0;
    struct pb_agent *a = pb_agent_of(r);
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
    struct pb_replica *r = pb_replica_of(cgid);
    if (!r)
        return 1;
    struct bpf_sock *fs = bpf_sk_fullsock(sk);
    struct pb_sock *ss = fs ? sockstate.sk_storage_get(fs, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
    if (ss) {
        if (ss->refused) { /* reported once per socket: the packet is retransmitted while dropped */
            struct pb_agent *a = pb_agent_of(r);
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
static __always_inline void pb_conn_open(struct pb_sock *ss, u32 isn, u64 cgid, u32 rslot)
{
    u32 start = isn + 1; /* the SYN takes one sequence number */
    ss->cgid = cgid;
    ss->rslot = rslot;
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
    struct pb_replica *r = pb_replica_of(cgid);
    if (!r)
        return 1;
    u32 z = 0;
    struct pb_agent *a = pb_agent_of(r);
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
        if (pb_held(r, now)) {
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
        u32 rs = 0;
        struct pb_replica *rr = pb_replica_slot(cg, &rs);
        if (!rr)
            return 1;
        struct pb_agent *aa = pb_agent_of(rr);
        if (!aa || ak.port != aa->server_port || ak.addr[0] != aa->server_addr[0] || ak.addr[1] != aa->server_addr[1] ||
            ak.addr[2] != aa->server_addr[2] || ak.addr[3] != aa->server_addr[3])
            return 1;
        ss = sockstate.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
        if (!ss)
            return 0;
        pb_conn_open(ss, seq, cg, rs);
        if (!len)
            return 1;
    }
    u32 seg_end = seq + syn + len; /* after this segment's data (a SYN takes one sequence number) */
    if (!th->urg && (s32)(seg_end - ss->approved_end) <= 0)
        return 1; /* every byte in it was approved (a retransmission, or the approved request itself) */
    u64 cgid = ss->cgid;
    struct pb_replica *r = pb_replica_at(ss->rslot, cgid);
    if (!r)
        return 1;
    u32 z = 0;
    struct pb_agent *a = pb_agent_of(r);
    struct pb_knobs *kn = knobs.lookup(&z);
    if (!a || !kn)
        return 0;
    u8 decision = PB_ALLOW, reason = R_OBSERVE, flags = 0;
    s64 now = pb_now(kn, cgid), until = 0;
    if (a->mode == M_OBSERVE) {
        reason = R_OBSERVE;
    } else if (pb_held(r, now)) {
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

/* ---------------------------------------------------------------- sk_msg: the parse, in phases
 *
 * The parser is bpf/parser.h (static inline, no map calls).  A message is read in phases (the
 * request line; the header section; the form body of a POST _search), each a program of its own
 * reached by tail call.  A phase's loop is bounded by may_goto (pb_may_goto in parser.h), not by a
 * step count: it continues by tail call of the same phase only if the kernel's loop budget runs
 * out, so the size of a head is bounded by PB_HDR_MAX, not by the 33 tail calls.
 */
#define JMP_LINE 0
#define JMP_HEAD 1
#define JMP_DECIDE 2

/* the tables the parser reads */
static __always_inline int pb_env_get(struct pb_env *e)
{
    u32 z = 0;
    e->ct = ctab.lookup(&z);
    e->nt = ntab.lookup(&z);
    e->tb = tabs.lookup(&z);
    return e->ct && e->nt && e->tb;
}

/* The request line is read: on to the header section. */
static __always_inline void pb_after_line(struct sk_msg_md *msg, struct pb_pstate *s)
{
    s->done = 0;
    jmp.call(msg, JMP_HEAD);
}

/* The header section is read: a POST _search's form body next (its parameters, if it came with
 * its head and no framing problem comes first), else the decision.  A form body that is announced
 * but not (all) in this write is waited for: the head is held (bpf_msg_cork_bytes) and, once head
 * and body are all written, the program runs again on them together, as one message at the same
 * place in the stream (a held message is not queued to TCP, so write_seq has not moved).  The
 * verdict of this run is then void; it stands (SK_DROP: the sender gets EACCES) only when the
 * kernel cannot hold the head (the socket's send memory is full). */
static __always_inline void pb_after_head(struct sk_msg_md *msg, struct pb_pstate *s)
{
    s->done = 0;
    if (s->head_end && !s->body && !s->fam && s->method == MT_POST && s->form == FORM_SEARCH &&
        s->st == ST_HEND && !s->ovr && !s->te && s->n_cl == 1 && !s->cl_bad && s->size - s->head_end <= s->cl_val) {
        u32 cl = s->cl_val;
        if (s->n_ct != 1 || !s->ct_form) {
            s->fam = S_MALFORMED;
        } else if (s->size - s->head_end < cl) {
            if (cl <= PB_BODY_MAX) {
                bpf_msg_cork_bytes(msg, s->head_end + cl);
                return; /* held: no decision, nothing counted; the caller returns SK_DROP */
            }
            s->fam = S_SPLIT;
        } else if (cl > PB_BODY_MAX) {
            s->fam = S_TOO_LARGE;
        } else if (cl) {
            s->body = 1;
            s->pos = s->head_end;
            s->end = s->head_end + cl;
            pb_query_start(s, QM_SEARCH);
            jmp.call(msg, JMP_LINE);
            return; /* tail call missing: the decision below denies (the body was not read) */
        }
    }
    jmp.call(msg, JMP_DECIDE);
}

/* A phase's program: scan on from where the state stands, and the same phase again by tail call
 * if the loop budget ran out first; the state when the phase is read, else 0 (the caller drops). */
static __always_inline struct pb_pstate *pb_phase(struct sk_msg_md *msg, const int line)
{
    struct pb_env e;
    struct pb_sock *ss = sockstate.sk_storage_get(msg->sk, 0, 0);
    if (!ss || !pb_env_get(&e))
        return 0;
    struct pb_pstate *s = &ss->ps;
    if (!s->done)
        pb_scan(msg, s, &e, line ? PH_LINE : PH_HEAD);
    if (!s->done) {
        jmp.call(msg, line ? JMP_LINE : JMP_HEAD);
        return 0;
    }
    return s;
}

int pb_parse_line(struct sk_msg_md *msg)
{
    struct pb_pstate *s = pb_phase(msg, 1);
    if (!s)
        return SK_DROP;
    if (s->body) { /* the form body is read */
        s->st = ST_HEND;
        jmp.call(msg, JMP_DECIDE);
        return SK_DROP;
    }
    pb_after_line(msg, s);
    return SK_DROP;
}

int pb_parse_head(struct sk_msg_md *msg)
{
    struct pb_pstate *s = pb_phase(msg, 0);
    if (!s)
        return SK_DROP;
    pb_after_head(msg, s);
    return SK_DROP;
}

/* ---------------------------------------------------------------- the verdict on what was parsed */

struct pb_parsed {
    u64 claim;
    u32 body_len;            /* the body the head announces (Content-Length) */
    u16 type_id;
    u8 shape;
    u8 interaction;
    u8 method;
    u8 has_claim;
    u8 has_ctx;              /* a launch context is presented (well formed, once: classify's context) */
    u8 named;                /* NM_* */
};

/* classify.classify's assembly: framing first, then the first deviation, then plain */
static __always_inline void pb_result(struct pb_pstate *s, struct pb_env *e, struct pb_parsed *out)
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
    if (s->st != ST_HEND || s->n_claim > 1 || s->claim_bad || s->n_ctx > 1 || s->ctx_bad || s->method == MT_NONE) {
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
             ((method == MT_GET || method == MT_HEAD || method == MT_DELETE) && cl != 0))
        shape = S_LENGTH;
    else if (rest > cl)
        shape = S_PIPELINED;
    else if (s->fam)
        shape = s->fam;
    out->shape = shape;
    out->method = method;
    if (s->n_claim) {
        out->has_claim = 1;
        out->claim = s->claim;
    }
    out->has_ctx = s->n_ctx;
    if (shape == S_MALFORMED)
        return;
    u16 type_id = s->type_id;
    if (type_id && form != FORM_NONE && form != FORM_SYSTEM) {
        out->type_id = type_id;
        if (method == MT_GET || method == MT_HEAD)
            out->interaction = form == FORM_ID ? I_READ : form == FORM_HIST ? I_HISTORY : form == FORM_VREAD ? I_VREAD :
                               I_SEARCH;
        else
            out->interaction = form == FORM_SEARCH ? I_SEARCH : method == MT_POST ? I_CREATE :
                               method == MT_PUT ? I_UPDATE : I_DELETE;
    }
    if (!(method == MT_POST && form == FORM_SEARCH))
        out->body_len = cl;
    if (shape != S_PLAIN) {
        out->named = NM_UNKNOWN;
        return;
    }
    /* a search of patients or encounters that names none of them: a sweep */
    if ((form == FORM_TYPE || form == FORM_SEARCH || form == FORM_COMP) && method != MT_POST || (method == MT_POST && form == FORM_SEARCH))
        if ((type_id == e->tb->patient || type_id == e->tb->encounter) && !s->npat && !s->nenc)
            s->unknown = 1;
    out->named = (s->npat ? NM_PATIENT : 0) | (s->nenc ? NM_ENCOUNTER : 0) | (s->unknown ? NM_UNKNOWN : 0);
}

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

/* lowest set bit of x (x != 0), by de Bruijn multiplication (BPF has no ctz) */
static __always_inline u32 pb_ctz(struct pb_env *e, u64 x)
{
    return e->tb->debruijn[(((x & -x) * 0x03f79d71b4cb0a89ULL) >> 58) & 63];
}

/* Whether the pairs `have` hold the request's touches (the primary pair; a plain request's
 * other reads and searches); else the first touch outside them in out_type/out_inter: the primary
 * pair first, then reads, then searches, by type id. */
static __always_inline int pb_hold(struct pb_env *e, struct pb_pairs *have, struct pb_pstate *s, struct pb_parsed *c,
                                   u8 plain, u16 *out_type, u8 *out_inter)
{
    u32 t = c->type_id, i = c->interaction & 7, w = (t >> 6) & 3;
    if (t && (w >= PB_TW || !((have->b[(i) * PB_TW + (w)] >> (t & 63)) & 1))) {
        *out_type = t;
        *out_inter = i;
        return 0;
    }
    if (!plain)
        return 1;
#pragma unroll
    for (int k = 0; k < PB_TW; k++) {
        u64 x = s->tr[k] & ~have->b[(I_READ) * PB_TW + (k)];
        if (x) {
            *out_type = k * 64 + pb_ctz(e, x);
            *out_inter = I_READ;
            return 0;
        }
    }
#pragma unroll
    for (int k = 0; k < PB_TW; k++) {
        u64 x = s->ts[k] & ~have->b[(I_SEARCH) * PB_TW + (k)];
        if (x) {
            *out_type = k * 64 + pb_ctz(e, x);
            *out_inter = I_SEARCH;
            return 0;
        }
    }
    return 1;
}

/* The lane's class pairs hold every touch outside fhir.allow. */
static __always_inline int pb_lane_holds(struct pb_agent *a, struct pb_pairs *lp, struct pb_pstate *s,
                                         struct pb_parsed *c, u8 plain)
{
    u32 t = c->type_id, i = c->interaction & 7, w = (t >> 6) & 3;
    if (t && w < PB_TW && !((a->allow.b[(i) * PB_TW + (w)] >> (t & 63)) & 1) && !((lp->b[(i) * PB_TW + (w)] >> (t & 63)) & 1))
        return 0;
    if (!plain)
        return 1;
#pragma unroll
    for (int k = 0; k < PB_TW; k++) {
        if (s->tr[k] & ~a->allow.b[(I_READ) * PB_TW + (k)] & ~lp->b[(I_READ) * PB_TW + (k)])
            return 0;
        if (s->ts[k] & ~a->allow.b[(I_SEARCH) * PB_TW + (k)] & ~lp->b[(I_SEARCH) * PB_TW + (k)])
            return 0;
    }
    return 1;
}

/* seenpat's key: a patient (hash) named by a replica */
static __always_inline struct pb_pat_key pb_pat(u64 cgid, u64 patient)
{
    struct pb_pat_key pk = {};
    pk.cgid = cgid;
    pk.patient = patient;
    return pk;
}

/* The request is in its launch context (docs/enforcement.md, "The context check"). */
static __always_inline int pb_in_context(struct pb_env *e, u64 cgid, struct pb_agent *a, struct pb_pstate *s,
                                         struct pb_parsed *c, s64 now)
{
    if (!c->named) { /* names no patient: every touch a pair staging used unscoped */
        u16 ot = 0;
        u8 oi = 0;
        return pb_hold(e, &a->unscoped, s, c, c->shape == S_PLAIN, &ot, &oi);
    }
    if (!s->n_ctx || (c->named & NM_UNKNOWN) || s->npat > 1 || s->nenc > 1)
        return 0;
    struct pb_ctx_key ck = {};
    ck.cgid = cgid;
    ck.ctx = s->ctx;
    struct pb_ctx *cx = contexts.lookup(&ck);
    if (!cx || now >= cx->expiry)
        return 0;
    if (s->npat && s->pat[0] != cx->patient)
        return 0;
    if (s->nenc && (!cx->encounter || s->enc != cx->encounter))
        return 0;
    return 1;
}

/* The decision on the parsed message (docs/enforcement.md, step 5 and 6), its event, its verdict. */
static __always_inline int pb_finish(struct sk_msg_md *msg, struct pb_env *e, struct pb_replica *r,
                                     struct pb_agent *a, struct pb_knobs *k, struct pb_sock *ss)
{
    struct pb_parsed c;
    struct pb_pstate *s = &ss->ps;
    pb_result(s, e, &c);
    u64 cgid = s->cgid;
    u32 size = s->size, w = s->wseq;
    u8 flags = s->cont ? F_CONTINUATION : 0, plain = c.shape == S_PLAIN;
    s64 now = pb_now(k, cgid);
    u8 decision = PB_ALLOW, reason = R_OK, out_inter = 0;
    u16 out_type = 0;
    s64 until = 0, np_next = 0, np_old = 0;
    u8 np_new = 0, np_path = 0;
    if (c.has_claim)
        flags |= F_CLAIM;
    if (c.has_ctx)
        flags |= F_CONTEXT;
    if (a->mode == M_OBSERVE) {
        reason = R_OBSERVE;
    } else if (pb_held(r, now)) {
        decision = PB_DENY;
        reason = R_QUARANTINED;
    } else if (s->desync == PB_NOT_CONNECTED) {
        decision = PB_DENY; /* refused, not a violation: the connection is not established */
        reason = R_UNCLASSIFIABLE;
        flags |= F_REFUSED;
    } else {
        u8 v = 0, via_lane = 0;
        struct pb_lane *ln = 0;
        if (c.has_claim) {
            struct pb_lane_key lk = {};
            lk.cgid = cgid;
            lk.claim = c.claim;
            ln = lanes.lookup(&lk);
        }
        if (s->desync) {
            v = R_UNCLASSIFIABLE; /* never allowed by allow_shapes: the bytes cannot be placed */
            flags |= F_DESYNC;
        } else if (!plain && ((S_FRAMING >> (c.shape & 31)) & 1 || !(a->allow_shapes & (1u << (c.shape & 31))))) {
            v = R_UNCLASSIFIABLE;
        } else if (!pb_hold(e, &a->allow, s, &c, plain, &out_type, &out_inter)) {
            v = R_TYPE;
            if (ln && ln->cls < 31) { /* a lane may allow what the envelope does not */
                struct pb_class_key ck = {};
                ck.agent = r->agent;
                ck.cls = ln->cls;
                struct pb_pairs *lp = lanebits.lookup(&ck);
                if (lp && pb_lane_holds(a, lp, s, &c, plain)) {
                    v = now < ln->expiry ? 0 : R_LANE_EXPIRED;
                    via_lane = v == 0;
                }
            }
        }
        if (!v && a->bound && !pb_in_context(e, cgid, a, s, &c, now)) {
            if (ln && now < ln->expiry)
                via_lane = 1; /* break-glass: outside every context, under an open lane */
            else
                v = R_OUT_OF_CONTEXT;
        }
        if (!v && !a->bound && a->np_interval && (c.named & (NM_PATIENT | NM_UNKNOWN)) && !(ln && now < ln->expiry)) {
            /* the new-patient budget: GCRA over the patients this replica has not named lately (an
             * unknown patient costs one step), spent only if the request is allowed */
            np_path = 1;
            if (s->npat > PB_NPAT) {
                v = R_NEW_PATIENT;
            } else {
#pragma unroll
                for (int i = 0; i < PB_NPAT; i++) {
                    if (i < s->npat) {
                        struct pb_pat_key pk = pb_pat(cgid, s->pat[i]);
                        s64 *last = seenpat.lookup(&pk);
                        if (!last || now - *last >= a->np_window)
                            np_new++;
                    }
                }
                if (c.named & NM_UNKNOWN)
                    np_new++;
                np_old = RD(r->np_tat);
                np_next = np_old;
                if (np_new) {
                    s64 x = np_old > now ? np_old : now;
                    if (x + (s64)(np_new - 1) * a->np_interval - now > a->np_tau)
                        v = R_NEW_PATIENT;
                    else
                        np_next = x + (s64)np_new * a->np_interval;
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
        if (!v && np_path && np_new) {
            /* allowed: the budget is spent, by compare-and-swap against the replica's other threads;
             * if one spent it meanwhile, the check is made again on what it left */
            u8 done = 0;
            for (int tries = 0; tries < 4 && !done && !v; tries++) {
                if (__sync_val_compare_and_swap(&r->np_tat, np_old, np_next) == np_old) {
                    done = 1;
                } else {
                    np_old = RD(r->np_tat);
                    s64 x = np_old > now ? np_old : now;
                    if (x + (s64)(np_new - 1) * a->np_interval - now > a->np_tau)
                        v = R_NEW_PATIENT;
                    else
                        np_next = x + (s64)np_new * a->np_interval;
                }
            }
            if (!done)
                v = R_NEW_PATIENT;
        }
        if (!v && np_path) { /* allowed: the patients are named now */
#pragma unroll
            for (int i = 0; i < PB_NPAT; i++) {
                if (i < s->npat) {
                    struct pb_pat_key pk = pb_pat(cgid, s->pat[i]);
                    s64 *last = seenpat.lookup(&pk);
                    if (last) {
                        *last = now;
                    } else if (r->seen_n < PB_SEEN_MAX) {
                        if (seenpat.update(&pk, &now) == 0)
                            __sync_fetch_and_add(&r->seen_n, 1);
                    }
                }
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
        struct pb_event *ev = pb_reserve(cgid, K_FHIR, decision, reason, HOOK_SK_MSG);
        if (ev) {
            __builtin_memset(ev, 0, sizeof(*ev));
            ev->t = now;
            ev->cgid = cgid;
            ev->claim = c.claim;
            ev->until = until;
            ev->size = size;
            ev->type_id = c.type_id;
            ev->kind = K_FHIR;
            ev->hook = HOOK_SK_MSG;
            ev->decision = decision;
            ev->reason = reason;
            ev->shape = c.shape;
            ev->interaction = c.interaction;
            ev->method = c.method;
            ev->flags = flags;
            ev->out_type = out_type;
            ev->out_inter = out_inter;
            ev->named = c.named;
            ev->ctx = s->ctx;
            ev->pat[0] = s->pat[0];
            ev->pat[1] = s->pat[1];
            ev->pat[2] = s->pat[2];
            ev->pat[3] = s->pat[3];
            ev->npat = s->npat;
            ev->enc = s->enc;
            ev->nenc = s->nenc;
            if (plain) {
                ev->tr[0] = s->tr[0];
                ev->tr[1] = s->tr[1];
                ev->tr[2] = s->tr[2];
                ev->ts[0] = s->ts[0];
                ev->ts[1] = s->ts[1];
                ev->ts[2] = s->ts[2];
            }
            pb_submit(ev);
        }
    }
    return decision == PB_DENY ? SK_DROP : pb_allow(msg, ss);
}

int pb_sk_msg(struct sk_msg_md *msg)
{
    struct pb_sock *ss = sockstate.sk_storage_get(msg->sk, 0, 0);
    /* The replica: the connection's own (its cgroup when its SYN left), so a socket handed to a
     * process outside the replica stays the replica's; else the sender's. */
    u64 cgid;
    struct pb_replica *r;
    if (ss && ss->conn) {
        cgid = ss->cgid;
        r = pb_replica_at(ss->rslot, cgid);
    } else {
        cgid = bpf_get_current_cgroup_id();
        r = pb_replica_of(cgid);
    }
    if (!r)
        return SK_PASS; /* not a paritybed replica: unenforced */
    u32 z = 0;
    struct pb_agent *a = pb_agent_of(r);
    struct pb_knobs *k = knobs.lookup(&z);
    if (!a || !k)
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
    u32 w = s->wseq;
    if (!s->desync && (s32)(ss->body_end - w) > 0) { /* the body of the last approved request goes on */
        if (size <= ss->body_end - w) {
            pb_commit(ss, w, size, 0, 0, 0);
            return pb_allow(msg, ss);
        }
        s->cont = 1;
    }
    if (s->desync || s->cont) {
        jmp.call(msg, JMP_DECIDE);
        return SK_DROP; /* tail call missing: fail closed */
    }
    s->bw0 = a->base_w[0];
    s->bw1 = a->base_w[1];
    s->bw2 = a->base_w[2];
    s->blen = a->base_len;
    u32 n = size < PB_HDR_MAX + PB_BODY_MAX ? size : PB_HDR_MAX + PB_BODY_MAX;
    if ((void *)(long)msg->data + n > (void *)(long)msg->data_end) /* not in one piece already */
        bpf_msg_pull_data(msg, 0, n, 0);
    /* the request line and the header section here, the decision by tail call; the phases'
     * own programs only when a loop budget runs out (or for a form body) */
    struct pb_env e;
    if (!pb_env_get(&e))
        return SK_DROP;
    s->ph = 1;
    pb_scan(msg, s, &e, PH_BOTH);
    if (!s->done) {
        jmp.call(msg, s->ph ? JMP_LINE : JMP_HEAD);
        return SK_DROP;
    }
    pb_after_head(msg, s);
    return SK_DROP; /* tail call missing: fail closed */
}

int pb_decide(struct sk_msg_md *msg)
{
    u32 z = 0;
    struct pb_knobs *k = knobs.lookup(&z);
    struct pb_sock *ss = sockstate.sk_storage_get(msg->sk, 0, 0);
    struct pb_env e;
    if (!k || !ss || !pb_env_get(&e))
        return SK_DROP;
    u64 cgid = ss->ps.cgid;
    struct pb_replica *r = pb_replica_at(ss->rslot, cgid); /* a hash lookup only off a connection */
    if (!r)
        return SK_DROP;
    struct pb_agent *a = pb_agent_of(r);
    if (!a)
        return SK_DROP;
    return pb_finish(msg, &e, r, a, k, ss);
}
