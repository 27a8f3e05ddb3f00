// The slice of OpenSSL 3 that KeelTLS uses, with the macros Swift cannot call wrapped as functions, and
// a BIO that moves TLS records between OpenSSL and caller-provided memory (pooled buffers) without a
// copy of its own.
#ifndef CKEEL_OPENSSL_H
#define CKEEL_OPENSSL_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/// Readies OpenSSL for Keel, once per process: routes OpenSSL's allocations through a per-thread cache
/// of small blocks (its per-record allocations then cost no malloc) when no OpenSSL allocation has
/// happened yet (and the build is not sanitized), and initialises libssl.
/// Returns 1 when the cache is in place, 0 when OpenSSL keeps plain malloc. Every Keel module that
/// calls OpenSSL calls this first.
int ckeel_openssl_prepare(void);

/// Where a connection's BIO reads records from and writes records to, set around each SSL call.
typedef struct ckeel_tls_io {
    /// Received bytes not yet read by OpenSSL (a pooled buffer's readable region).
    const unsigned char *input;
    size_t input_length;
    /// Where OpenSSL's records go (a pooled buffer's writable region) and how much of it is filled.
    unsigned char *output;
    size_t output_capacity;
    size_t output_length;
} ckeel_tls_io;

/// A BIO over `io` (not owned): reads consume `input`, writes fill `output`; either asks OpenSSL to
/// retry when its side is empty or full. NULL when OpenSSL cannot make one.
BIO *ckeel_tls_bio_new(ckeel_tls_io *io);

int ckeel_ssl_ctx_set_min_proto_version(SSL_CTX *ctx, int version);
int ckeel_ssl_ctx_set_max_proto_version(SSL_CTX *ctx, int version);
uint64_t ckeel_ssl_ctx_set_options(SSL_CTX *ctx, uint64_t options);
int ckeel_ssl_ctx_set_groups_list(SSL_CTX *ctx, const char *groups);
long ckeel_ssl_ctx_set_session_cache_mode(SSL_CTX *ctx, long mode);
int ckeel_ssl_set_tlsext_host_name(SSL *ssl, const char *name);
long ckeel_ssl_ctx_set_mode(SSL_CTX *ctx, long mode);
int ckeel_ssl_ctx_add_extra_chain_cert(SSL_CTX *ctx, X509 *cert);

/// The options every Keel context sets: no compression, no renegotiation (client-initiated or any
/// other), no protocol older than TLS 1.2; OpenSSL 3 spells them as macros.
uint64_t ckeel_ssl_safe_options(void);

/// A server's ALPN protocols in wire format (each name prefixed by its length), owned by the caller
/// for as long as the context lives.
typedef struct ckeel_alpn_list {
    const unsigned char *protocols;
    unsigned int length;
} ckeel_alpn_list;

/// ALPN selection on a server: the first of `list`'s protocols that the client offered; a client that
/// offers none of them is refused (RFC 7301).
void ckeel_ssl_ctx_set_alpn_select(SSL_CTX *ctx, ckeel_alpn_list *list);

/// Server name indication on a server: `callback(ssl, alert, argument)` runs on each ClientHello that
/// names a server (it may switch the SSL's context) and returns SSL_TLSEXT_ERR_OK.
typedef int (*ckeel_servername_callback)(SSL *ssl, int *alert, void *argument);
void ckeel_ssl_ctx_set_servername_callback(SSL_CTX *ctx, ckeel_servername_callback callback, void *argument);

/// The server name the client sent (NULL: none).
const char *ckeel_ssl_get_servername(const SSL *ssl);

/// Session ticket keys that rotate: tickets are sealed with the current key; a ticket sealed with the
/// previous one is still accepted (and renewed); older ones get a full handshake. A new key replaces the
/// current one once it is `lifetime_seconds` old. Thread-safe (a server's I/O threads share it).
typedef struct ckeel_ticket_keys ckeel_ticket_keys;
ckeel_ticket_keys *ckeel_ticket_keys_new(int64_t lifetime_seconds);
void ckeel_ticket_keys_free(ckeel_ticket_keys *keys);
/// Installs `keys` as `ctx`'s ticket key callback (keys must outlive ctx's sessions).
int ckeel_ssl_ctx_set_ticket_keys(SSL_CTX *ctx, ckeel_ticket_keys *keys);
/// Rotates now (for tests and operators): the current key becomes the previous one.
void ckeel_ticket_keys_rotate(ckeel_ticket_keys *keys);

/// A pointer kept with a context (its Swift owner), for callbacks that get only the SSL.
void ckeel_ssl_ctx_set_owner(SSL_CTX *ctx, void *owner);
void *ckeel_ssl_get_ctx_owner(const SSL *ssl);
/// Client sessions: OpenSSL calls `callback(ssl, session)` with each new session (return 1 to keep
/// the reference); no internal cache.
typedef int (*ckeel_new_session_callback)(SSL *ssl, SSL_SESSION *session);
void ckeel_ssl_ctx_set_client_session_callback(SSL_CTX *ctx, ckeel_new_session_callback callback);

/// The negotiated ALPN protocol (NULL, 0 when none).
void ckeel_ssl_get_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *length);

/// The last error in OpenSSL's queue as text ("" when none), clearing the queue.
void ckeel_ssl_error_string(char *buffer, size_t length);

/// The certificate's not-before and not-after as seconds since the epoch (0 when unreadable).
int64_t ckeel_x509_not_before(const X509 *cert);
int64_t ckeel_x509_not_after(const X509 *cert);

/// The certificate's signature digest NID (NID_undef when unknown).
int ckeel_x509_signature_digest_nid(const X509 *cert);

/// The certificate's DNS subject alternative names, each followed by a newline, into `buffer`
/// (truncated to fit). Returns how many names there are.
int ckeel_x509_dns_names(X509 *cert, char *buffer, size_t length);

#endif
