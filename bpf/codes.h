/* codes.h: the numbers the kernel programs and the control plane exchange.
 *
 * Each list is the index of a Python tuple it mirrors (enforcer/kernel_abi.py holds the
 * Python side; tests/test_kernel_abi.py checks them): reasons = kernel_abi.REASONS, decisions
 * = kernel_abi.DECISIONS, interactions = INTERACTIONS (+1, 0 = none), shapes = policy.SHAPES
 * (+1, 0 = plain), methods = classify.METHODS (+1), parameter kinds = grammar.KINDS,
 * modifiers = grammar.MODIFIERS (+1), modes = kernel_abi.MODES.
 */
#ifndef PARITYBED_CODES_H
#define PARITYBED_CODES_H

#define PB_HDR_MAX 16384      /* a request head (request line + headers + CRLFCRLF) is at most this */
#define PB_BODY_MAX 4096      /* the form body of POST _search */
#define PB_TYPE_MAX 40        /* longest resource type name */
#define PB_NAME_MAX 40        /* longest parameter name or modifier (one segment) */
#define PB_ID_MAX 64
#define PB_CLAIM_MAX 64       /* claim and launch-context ids */
#define PB_BASE_MAX 24
#define PB_HNAME_MAX 24       /* header names we look up */
#define PB_NARROW 4           /* chain hops through up to this many targets are narrowed */
#define PB_NPAT 4             /* distinct patients a request's names are kept for */

/* decisions */
#define PB_ALLOW 0
#define PB_DENY 1
#define PB_ALERT 2

/* reasons */
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
#define R_OUT_OF_CONTEXT 13
#define R_NEW_PATIENT 14

/* response modes */
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
#define MT_HEAD 5

/* interactions: INTERACTIONS index + 1 */
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
#define S_SPECIAL 20
#define S_PAGING 21
/* shapes of framing: never allowed by a policy */
#define S_FRAMING ((1u << S_METHOD_OVERRIDE) | (1u << S_MALFORMED) | (1u << S_PIPELINED) | (1u << S_CHUNKED) | \
                   (1u << S_LENGTH) | (1u << S_SPLIT) | (1u << S_TOO_LARGE))

/* character classes (one u32 of flags per byte value; the table comes from classify.char_classes) */
#define C_UPPER (1u << 0)
#define C_LOWER (1u << 1)
#define C_DIGIT (1u << 2)
#define C_ID (1u << 3)      /* ids: A-Z a-z 0-9 - . */
#define C_HEX (1u << 4)     /* 0-9 a-f A-F */
#define C_NAME (1u << 5)    /* a parameter name segment: A-Z a-z 0-9 _ - */
#define C_CLAIM (1u << 6)   /* claim and launch-context ids: A-Z a-z 0-9 . _ : - */
#define C_OP (1u << 7)      /* operation names after $: A-Z a-z 0-9 _ - */
#define C_TCHAR (1u << 8)   /* header field-name token characters (RFC 9110) */
#define C_VCHAR (1u << 9)   /* request-target bytes 0x21-0x7e */
#define C_HVAL (1u << 10)   /* header value bytes: 0x20-0x7e, HTAB, 0x80-0xff */
#define C_OWS (1u << 11)    /* SP, HTAB */
#define C_ALPHA (1u << 12)  /* A-Z a-z */

/* parameter kinds (grammar.KINDS) */
#define P_NONE 0
#define P_NUMBER 1
#define P_DATE 2
#define P_STRING 3
#define P_TOKEN 4
#define P_REFERENCE 5
#define P_COMPOSITE 6
#define P_QUANTITY 7
#define P_URI 8
#define P_SPECIAL_TYPE 9
#define P_RESULT 10
#define P_INCLUDE 11
#define P_REVINCLUDE 12
#define P_HAS 13
#define P_TYPE 14
#define P_OPAQUE 15
#define P_CONTAINED 16
#define P_KINDS 17
#define P_ORDINARY(k) ((k) >= P_NUMBER && (k) <= P_SPECIAL_TYPE)
/* a parameter's value in the name table: kind | target set << 5 */
#define PV_KIND(v) ((v) & 31)
#define PV_TSET(v) (((v) >> 5) & 127)
#define PV_ABSENT 31          /* a type's entry for a parameter of every type that it does not have */

/* modifiers (grammar.MODIFIERS + 1) */
#define MOD_MISSING 1
#define MOD_IN 8
#define MOD_NOT_IN 9
#define MOD_IDENTIFIER 11
#define MOD_ITERATE 12
#define MOD_RECURSE 13
#define MOD_ABOVE 6
#define MOD_BELOW 7

/* header kinds */
#define H_CONTENT_LENGTH 1
#define H_TRANSFER_ENCODING 2
#define H_OVERRIDE 3
#define H_CLAIM 4
#define H_CONTEXT 5
#define H_CONTENT_TYPE 6

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
#define F_CONTEXT (1u << 7)   /* the request presented a launch context */

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

/* what a request names (pb_event.named) */
#define NM_PATIENT (1u << 0)
#define NM_ENCOUNTER (1u << 1)
#define NM_UNKNOWN (1u << 2)

#define PB_I64_MAX 0x7fffffffffffffffLL
#define PB_NOT_CONNECTED 0xff  /* pb_pstate.desync: not a shape, a refusal */

#endif
