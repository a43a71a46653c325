/* paritybed.h: map keys, values, event records and codes shared by the kernel programs
 * (bpf/paritybed.c) and the control plane.  enforcer/kernel_abi.py mirrors every struct here
 * with ctypes; tests/test_kernel_abi.py checks the sizes, so change both together.
 *
 * Codes are the indices of the Python tuples they mirror: reasons = enforcer.engine.REASONS,
 * decisions = engine.DECISIONS, interactions = policy.INTERACTIONS (+1, 0 = none),
 * shapes = policy.SHAPES (+1, 0 = plain), modes = engine._MODE.
 */
#ifndef PARITYBED_H
#define PARITYBED_H

#define PB_HDR_MAX 2048       /* a request head (request line + headers + CRLFCRLF) is at most this */
#define PB_TYPE_MAX 40        /* longest resource type name we look up */
#define PB_ID_MAX 64
#define PB_VALUE_MAX 128
#define PB_CLAIM_MAX 64
#define PB_BASE_MAX 24
#define PB_NAME_MAX 16        /* query parameter names we look up */
#define PB_HNAME_MAX 24       /* header names we look up */

/* decisions (engine.DECISIONS) */
#define PB_ALLOW 0
#define PB_DENY 1
#define PB_ALERT 2

/* reasons (engine.REASONS) */
#define R_OK 0
#define R_OBSERVE 1
#define R_LANE 2
#define R_TYPE 3
#define R_RATE 4
#define R_NOT_BAA 5
#define R_NOT_ENVELOPE 6
#define R_QUARANTINED 7
#define R_LANE_EXPIRED 8
#define R_UNCLASSIFIABLE 9

/* response modes (engine._MODE) */
#define M_OBSERVE 0
#define M_ALERT 1
#define M_DENY 2
#define M_QUARANTINE 3
#define M_KILL 4

/* methods */
#define MT_NONE 0
#define MT_GET 1
#define MT_POST 2
#define MT_PUT 3
#define MT_DELETE 4

/* interactions: policy.INTERACTIONS index + 1 */
#define I_NONE 0
#define I_READ 1
#define I_VREAD 2
#define I_SEARCH 3
#define I_CREATE 4
#define I_UPDATE 5
#define I_DELETE 6
#define I_HISTORY 7

/* shapes: policy.SHAPES index + 1 (0 = plain) */
#define S_PLAIN 0
#define S_BUNDLE 1
#define S_OPERATION 2
#define S_INCLUDE 3
#define S_COMPARTMENT 4
#define S_CHAINED 5
#define S_TYPE_PARAM 6
#define S_HAS 7
#define S_GRAPHQL 8
#define S_METHOD_OVERRIDE 9
#define S_ENCODED 10
#define S_MALFORMED 11
#define S_PARAM 12
#define S_PIPELINED 13
#define S_CHUNKED 14
#define S_LENGTH 15
#define S_SPLIT 16
#define S_TOO_LARGE 17
#define S_UNKNOWN_TYPE 18
#define S_NOT_FHIR 19

/* character classes (one u32 of flags per byte value, table filled from enforcer/classify.py) */
#define C_UPPER (1u << 0)
#define C_LOWER (1u << 1)
#define C_DIGIT (1u << 2)
#define C_ID (1u << 3)      /* resource ids and version ids: A-Z a-z 0-9 - */
#define C_VALUE (1u << 4)   /* query values: A-Z a-z 0-9 . _ | : / , - */
#define C_PNAME (1u << 5)   /* query parameter names: A-Z a-z 0-9 _ . : - */
#define C_CLAIM (1u << 6)   /* break-glass claim ids: A-Z a-z 0-9 . _ : - */
#define C_OP (1u << 7)      /* operation names after $: A-Z a-z 0-9 _ - */
#define C_TCHAR (1u << 8)   /* header field-name token characters (RFC 9110) */
#define C_VCHAR (1u << 9)   /* request-target bytes 0x21-0x7e */
#define C_HVAL (1u << 10)   /* header value bytes 0x20-0x7e and HTAB */
#define C_OWS (1u << 11)    /* SP, HTAB */
#define C_ALPHA (1u << 12)  /* A-Z a-z */

/* query parameter name kinds (names map) */
#define N_SAFE 1
#define N_INCLUDE 2
#define N_TYPE 3
#define N_HAS 4

/* header name kinds (hnames map) */
#define H_CONTENT_LENGTH 1
#define H_TRANSFER_ENCODING 2
#define H_OVERRIDE 3
#define H_CLAIM 4

/* event kinds, flags, hooks */
#define K_FHIR 0
#define K_EGRESS 1

#define F_FIRST_CONTACT (1u << 0)
#define F_QUARANTINE (1u << 1)
#define F_KILL (1u << 2)
#define F_CLAIM (1u << 3)     /* the request presented a break-glass claim */
#define F_CONTINUATION (1u << 4) /* bytes arrived while a body was still expected */
#define F_DESYNC (1u << 5)    /* the connection's byte stream is not where the approved bytes left it
                               * (a short send continued by another thread, bytes the parser never
                               * approved, no state for the connection): denied, never re-parsed */
#define F_REFUSED (1u << 6)   /* refused outright, not a policy violation (a send on a connection that
                               * is not established, a Fast Open connect, a socket kind or option the
                               * agent has no business with): no quarantine, the caller gets an error */

#define HOOK_CONNECT4 0
#define HOOK_CONNECT6 1
#define HOOK_SENDMSG4 2
#define HOOK_SENDMSG6 3
#define HOOK_SK_MSG 4
#define HOOK_UNSEEN 5     /* cgroup_skb egress: bytes to a FHIR server that sk_msg never approved */
#define HOOK_SOCKET 6     /* cgroup/sock_create: a socket kind the agent has no business with */
#define HOOK_SOCKOPT 7    /* cgroup/setsockopt: an option that would hide bytes from the parser */
#define HOOK_INBOUND 8    /* a connection from outside: a SYN-ACK leaving a replica (cgroup_skb egress)
                           * or a packet arriving at a replica's listener (cgroup_skb ingress) */
#define HOOK_PACKET 9     /* cgroup_skb egress: a replica's packet with IPv4 options or IPv6 extension
                           * headers (a routing header sends it elsewhere than the hooks saw) */

#define PB_I64_MAX 0x7fffffffffffffffLL
#define PB_NOT_CONNECTED 0xff  /* pb_pstate.desync: not a shape, a refusal */

/* ---- maps ---- */

/* knobs: array[1], written by the control plane only */
struct pb_knobs {
    __u64 real_clock;        /* 0: virtual clock (vnow), 1: bpf_ktime_get_ns() */
    __s64 vnow;              /* virtual clock: simulated t in ns */
    __u64 record_all;        /* 1: an event for every decision, allowed ones too */
    __u64 registry_version;  /* BAA registry version in force (AI-BOM first contacts) */
};

/* ctab: array[1], the character class table */
struct pb_ctab {
    __u32 c[256];
};

#define PB_ALLOW_WORDS 19     /* 147 type ids (0: none) x 8 interaction codes, in bits */

/* agents: hash, key = FNV-1a 64 of the agent name */
struct pb_agent {
    __u32 server_addr[4];    /* policy fhir.server, IPv4 as ::ffff:a.b.c.d (network order) */
    __u16 server_port;       /* network byte order */
    __u8 mode;               /* M_* */
    __u8 base_len;           /* length of fhir.base */
    __u32 allow_shapes;      /* bit S_* set: that shape is allowed */
    __u64 base_w[3];         /* fhir.base packed like a shift register (see classify.pack_words) */
    __s64 interval;          /* GCRA T in clock ns (0: no rate limit) */
    __s64 tau;               /* GCRA tolerance (burst-1)*T */
    __s64 hold;              /* quarantine hold in clock ns; PB_I64_MAX: until released */
    __u64 allow[PB_ALLOW_WORDS]; /* bit type_id * 8 + interaction: the pair is in fhir.allow (as
                              * bit 0 of its pairs mask: the common allowed request needs no
                              * pairs lookup) */
};

/* replicas: hash, key = cgroup id.  agent/replica written by the control plane, tat/q_until
 * by the kernel (and q_until by the control plane on release). */
struct pb_replica {
    __u64 agent;             /* agents key */
    __s64 tat;               /* GCRA theoretical arrival time */
    __s64 q_until;           /* quarantined while now < q_until */
    __u32 replica;
    __u32 pad;
};

struct pb_pair_key {
    __u64 agent;
    __u16 type_id;           /* index into classify.R4_TYPES + 1 */
    __u8 interaction;        /* I_* */
    __u8 pad[5];
};
/* pairs value: __u32 mask; bit 0 = in fhir.allow, bit 1+c = in lane class c */

struct pb_lane_key {
    __u64 cgid;
    __u64 claim;             /* FNV-1a 64 of the claim id */
};
struct pb_lane {
    __s64 expiry;            /* the lane is open while now < expiry */
    __u32 cls;               /* lane class index (sorted lane names of the agent's policy) */
    __u32 pad;
};

struct pb_addr_key {
    __u32 addr[4];           /* IPv6, or IPv4 mapped as ::ffff:a.b.c.d (network order) */
    __u16 port;              /* network byte order */
    __u16 pad[3];
};
struct pb_endpoint {          /* registry value */
    __u64 name;              /* FNV-1a 64 of the endpoint name */
    __s64 lo;                /* covered while lo <= now < hi */
    __s64 hi;
    __u32 active;
    __u32 pad;
};
struct pb_envelope_key {
    __u64 agent;
    __u64 name;
};
struct pb_seen_key {
    __u64 cgid;
    struct pb_addr_key addr;
};

/* ntab: array[1], the names the parser looks up: resource types, query parameter names and
 * header names, by their exact bytes packed like the parser's shift register (word 0 holds the
 * last 8 bytes, classify.pack_words).  An open table read at one slot, (hash * mult) >> (64 -
 * PB_NT_BITS), with a multiplier the control plane chose so that no two names share a slot:
 * one memory read instead of a hash-map helper call per name.  The hash only picks the slot;
 * the entry's table, length and bytes are compared in full, so a collision never matches. */
#define PB_NT_BITS 12
#define PB_NT_SIZE (1 << PB_NT_BITS)
#define NT_TYPE 1             /* val: type id (classify.TYPE_ID) */
#define NT_PARAM 2            /* val: N_* */
#define NT_HEADER 3           /* val: H_* (names lower-cased) */
/* the slot hash: w0 ^ w1*P1 ^ w2*P2 ^ w3*P3 ^ w4*P4 ^ (tab << 8 | len)*P5, times mult */
#define NT_P1 0x9e3779b97f4a7c15ULL
#define NT_P2 0xc2b2ae3d27d4eb4fULL
#define NT_P3 0x165667b19e3779f9ULL
#define NT_P4 0xd6e8feb86659fd93ULL
#define NT_P5 0xff51afd7ed558ccdULL
struct pb_name {
    __u64 w[5];
    __u8 tab;                /* NT_*; 0: empty slot */
    __u8 len;                /* bytes in the name */
    __u16 val;
    __u32 pad;
};
struct pb_ntab {
    __u64 mult;              /* odd */
    struct pb_name e[PB_NT_SIZE];
};

/* per-socket state (sk_storage).  pb_pstate is the request parser's state while one message
 * is parsed in chunks (tail calls): kernel-internal, not mirrored in Python. */
struct pb_pstate {
    __u64 k0, k1, k2, k3, k4;  /* shift register of the current token (see classify.pack_words) */
    __u64 b0, b1;            /* a query parameter's name before its ':' */
    __u64 bw0, bw1, bw2;     /* the agent's fhir.base */
    __u64 claim;             /* FNV-1a 64 of the claim header value */
    __u64 cgid;              /* the replica the message is judged for (see pb_sk_msg) */
    __u32 wseq;              /* tcp_sock.write_seq when the message was handed to the program */
    __u32 pos, n, size, head_end, w, len, tlen, plen, blen;
    __u32 cl_val, cl_cur, n_cl, n_claim, sub;
    __u16 type_id;
    __u8 st, fam, form, method, hkind, tbad, colon, dot, cl_bad, claim_bad, te, ovr, cont, done;
    __u8 desync;             /* S_SPLIT / S_MALFORMED: the stream is not where approved bytes left it;
                              * PB_NOT_CONNECTED: a send on a connection that is not established */
    __u8 pad2[7];
};
/* Per socket, but every field below `cookie` belongs to the *connection*: reset by the SYN that
 * opens it (pb_unseen), so nothing computed for one connection survives a disconnect
 * (connect(AF_UNSPEC)) and a reconnect of the same socket.  Positions are TCP sequence numbers,
 * compared modulo 2^32: the parser's verdicts are tied to the exact bytes of the stream they
 * judged (tcp_sock.write_seq when the verdict was taken), not to a running count. */
struct pb_sock {
    __u64 cookie;            /* the socket's key in fhir_socks (sk_msg redirects an approved message to it) */
    __u64 cgid;              /* the replica whose connection this is (its cgroup when the SYN left) */
    __u64 writer;            /* pid_tgid of the thread whose message was approved last */
    __u32 isn;               /* initial sequence number (the SYN) */
    __u32 next_seq;          /* where the next approved byte goes: every approved byte before it is queued */
    __u32 msg_start;         /* first byte of the last approved message */
    __u32 head_end;          /* after the head of the last approved request */
    __u32 body_end;          /* after its body (head_end when it has none) */
    __u32 approved_end;      /* the backstop: no byte at or after it leaves */
    __u8 conn;               /* 1: a replica's connection to its FHIR server, seen from its SYN */
    __u8 reported;           /* unapproved bytes already reported on this connection (one event) */
    __u8 refused;            /* a refused packet of this socket already reported (one event) */
    __u8 pad[5];
    struct pb_pstate ps;
};

/* ---- the event record (ring buffer) ---- */
struct pb_event {
    __s64 t;                 /* the clock value the decision used */
    __u64 cgid;
    __u64 claim;             /* claim hash (fhir, F_CLAIM) */
    __s64 until;             /* q_until set by this decision (F_QUARANTINE/F_KILL) */
    __u64 registry_version;  /* egress: version in force */
    __u64 endpoint;          /* egress: registry name hash (0: not in the registry) */
    __u32 addr[4];           /* egress: destination */
    __u32 size;              /* fhir: bytes in the message */
    __u16 port;              /* egress: destination port, network order */
    __u16 type_id;           /* fhir */
    __u8 kind;               /* K_* */
    __u8 hook;               /* HOOK_* */
    __u8 decision;           /* PB_ALLOW/DENY/ALERT */
    __u8 reason;             /* R_* */
    __u8 shape;              /* S_* */
    __u8 interaction;        /* I_* */
    __u8 method;             /* MT_* */
    __u8 flags;              /* F_* */
    __u16 sock_family;         /* HOOK_SOCKET: the refused socket's family, type, protocol; */
    __u16 sock_type;           /* HOOK_SOCKOPT: level in sock_type, option name in sock_protocol */
    __u32 sock_protocol;
};

/* lost_by: events the ring buffers had no room for, by what they would have said (the total is
 * lost[0]); an attacker flooding one ring cannot make a decision vanish without a trace */
struct pb_lost_key {
    __u64 cgid;
    __u8 kind;
    __u8 decision;
    __u8 reason;
    __u8 hook;
    __u32 pad;
};

/* counters: per-CPU array indexed kind * 16 + reason (decisions) ; lost: array[1] */
#define PB_COUNTERS 32

#endif
