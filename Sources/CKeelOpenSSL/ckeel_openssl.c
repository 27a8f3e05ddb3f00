#include "ckeel_openssl.h"
#include <pthread.h>
#include <string.h>
#include <time.h>

static BIO_METHOD *keel_method;
static pthread_once_t keel_method_once = PTHREAD_ONCE_INIT;

static int keel_bio_write(BIO *bio, const char *data, int length) {
    ckeel_tls_io *io = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    size_t room = io->output_capacity - io->output_length;
    if (room == 0 || length <= 0) {
        if (length > 0) BIO_set_retry_write(bio);
        return length <= 0 ? 0 : -1;
    }
    size_t count = (size_t)length < room ? (size_t)length : room;
    memcpy(io->output + io->output_length, data, count);
    io->output_length += count;
    return (int)count;
}

static int keel_bio_read(BIO *bio, char *data, int length) {
    ckeel_tls_io *io = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (io->input_length == 0 || length <= 0) {
        if (length > 0) BIO_set_retry_read(bio);
        return length <= 0 ? 0 : -1;
    }
    size_t count = (size_t)length < io->input_length ? (size_t)length : io->input_length;
    memcpy(data, io->input, count);
    io->input += count;
    io->input_length -= count;
    return (int)count;
}

static long keel_bio_ctrl(BIO *bio, int command, long number, void *pointer) {
    (void)number;
    (void)pointer;
    ckeel_tls_io *io = BIO_get_data(bio);
    switch (command) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return io ? (long)io->input_length : 0;
    case BIO_CTRL_WPENDING:
        return 0;
    default:
        return 0;
    }
}

static int keel_bio_create(BIO *bio) {
    BIO_set_init(bio, 1);
    return 1;
}

static void keel_make_method(void) {
    BIO_METHOD *method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "keel pooled buffers");
    if (!method) return;
    BIO_meth_set_write(method, keel_bio_write);
    BIO_meth_set_read(method, keel_bio_read);
    BIO_meth_set_ctrl(method, keel_bio_ctrl);
    BIO_meth_set_create(method, keel_bio_create);
    keel_method = method;
}

BIO *ckeel_tls_bio_new(ckeel_tls_io *io) {
    pthread_once(&keel_method_once, keel_make_method);
    if (!keel_method) return NULL;
    BIO *bio = BIO_new(keel_method);
    if (bio) BIO_set_data(bio, io);
    return bio;
}

int ckeel_ssl_ctx_set_min_proto_version(SSL_CTX *ctx, int version) { return SSL_CTX_set_min_proto_version(ctx, version); }
int ckeel_ssl_ctx_set_max_proto_version(SSL_CTX *ctx, int version) { return SSL_CTX_set_max_proto_version(ctx, version); }
uint64_t ckeel_ssl_ctx_set_options(SSL_CTX *ctx, uint64_t options) { return SSL_CTX_set_options(ctx, options); }
int ckeel_ssl_ctx_set_groups_list(SSL_CTX *ctx, const char *groups) { return SSL_CTX_set1_groups_list(ctx, groups); }
long ckeel_ssl_ctx_set_session_cache_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_session_cache_mode(ctx, mode); }
int ckeel_ssl_set_tlsext_host_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }
long ckeel_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
int ckeel_ssl_ctx_add_extra_chain_cert(SSL_CTX *ctx, X509 *cert) { return (int)SSL_CTX_add_extra_chain_cert(ctx, cert); }

uint64_t ckeel_ssl_safe_options(void) {
    return SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
}

static int keel_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *out_length,
                            const unsigned char *offered, unsigned int offered_length, void *argument) {
    (void)ssl;
    ckeel_alpn_list *list = argument;
    unsigned char *selected = NULL;
    unsigned char selected_length = 0;
    if (SSL_select_next_proto(&selected, &selected_length, list->protocols, list->length, offered, offered_length)
        != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;  // no protocol in common: refuse (RFC 7301)
    }
    *out = selected;
    *out_length = selected_length;
    return SSL_TLSEXT_ERR_OK;
}

void ckeel_ssl_ctx_set_alpn_select(SSL_CTX *ctx, ckeel_alpn_list *list) {
    SSL_CTX_set_alpn_select_cb(ctx, keel_alpn_select, list);
}

void ckeel_ssl_ctx_set_servername_callback(SSL_CTX *ctx, ckeel_servername_callback callback, void *argument) {
    SSL_CTX_set_tlsext_servername_callback(ctx, callback);
    SSL_CTX_set_tlsext_servername_arg(ctx, argument);
}

const char *ckeel_ssl_get_servername(const SSL *ssl) { return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name); }

void ckeel_ssl_get_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *length) {
    SSL_get0_alpn_selected(ssl, data, length);
}

void ckeel_ssl_error_string(char *buffer, size_t length) {
    unsigned long code = ERR_get_error();
    if (length > 0) buffer[0] = 0;
    if (code != 0 && length > 0) ERR_error_string_n(code, buffer, length);
    ERR_clear_error();
}

static int64_t keel_asn1_time_to_epoch(const ASN1_TIME *time) {
    struct tm parsed;
    if (!time || ASN1_TIME_to_tm(time, &parsed) != 1) return 0;
    return (int64_t)timegm(&parsed);
}

int64_t ckeel_x509_not_before(const X509 *cert) { return keel_asn1_time_to_epoch(X509_get0_notBefore(cert)); }
int64_t ckeel_x509_not_after(const X509 *cert) { return keel_asn1_time_to_epoch(X509_get0_notAfter(cert)); }

int ckeel_x509_signature_digest_nid(const X509 *cert) {
    int digest = NID_undef, key = NID_undef;
    if (!OBJ_find_sigid_algs(X509_get_signature_nid(cert), &digest, &key)) return NID_undef;
    return digest;
}

int ckeel_x509_dns_names(X509 *cert, char *buffer, size_t length) {
    if (length > 0) buffer[0] = 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (!names) return 0;
    int count = 0;
    size_t used = 0;
    for (int index = 0; index < sk_GENERAL_NAME_num(names); index++) {
        const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, index);
        if (name->type != GEN_DNS) continue;
        const unsigned char *text = ASN1_STRING_get0_data(name->d.dNSName);
        size_t text_length = (size_t)ASN1_STRING_length(name->d.dNSName);
        count++;
        if (used + text_length + 2 > length) continue;
        memcpy(buffer + used, text, text_length);
        used += text_length;
        buffer[used++] = '\n';
        buffer[used] = 0;
    }
    GENERAL_NAMES_free(names);
    return count;
}

// MARK: Session ticket keys

#include <openssl/rand.h>
#include <openssl/core_names.h>

static int keel_keys_index = -1, keel_owner_index = -1;
/// The ticket cipher, fetched once: OpenSSL 3 looks a cipher named by EVP_aes_256_cbc() up again on
/// every use, which costs each handshake a provider lookup per ticket.
static EVP_CIPHER *keel_ticket_cipher;
static pthread_once_t keel_index_once = PTHREAD_ONCE_INIT;
static void keel_make_indices(void) {
    keel_keys_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    keel_owner_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    keel_ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
}

typedef struct {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t created;
    int valid;
} keel_ticket_key;

struct ckeel_ticket_keys {
    pthread_mutex_t lock;
    int64_t lifetime;
    keel_ticket_key current;
    keel_ticket_key previous;
};

static int64_t keel_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec;
}

static int keel_make_key(keel_ticket_key *key) {
    key->created = keel_now();
    key->valid = RAND_bytes(key->name, sizeof key->name) == 1 && RAND_bytes(key->aes, sizeof key->aes) == 1
        && RAND_bytes(key->hmac, sizeof key->hmac) == 1;
    return key->valid;
}

static void keel_rotate_locked(ckeel_ticket_keys *keys) {
    keys->previous = keys->current;
    keel_make_key(&keys->current);
}

ckeel_ticket_keys *ckeel_ticket_keys_new(int64_t lifetime_seconds) {
    ckeel_ticket_keys *keys = OPENSSL_zalloc(sizeof *keys);
    if (!keys) return NULL;
    pthread_mutex_init(&keys->lock, NULL);
    keys->lifetime = lifetime_seconds > 0 ? lifetime_seconds : 1;
    if (!keel_make_key(&keys->current)) {
        ckeel_ticket_keys_free(keys);
        return NULL;
    }
    return keys;
}

void ckeel_ticket_keys_free(ckeel_ticket_keys *keys) {
    if (!keys) return;
    pthread_mutex_destroy(&keys->lock);
    OPENSSL_clear_free(keys, sizeof *keys);
}

void ckeel_ticket_keys_rotate(ckeel_ticket_keys *keys) {
    pthread_mutex_lock(&keys->lock);
    keel_rotate_locked(keys);
    pthread_mutex_unlock(&keys->lock);
}

static int keel_ticket_callback(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cipher,
                                EVP_MAC_CTX *mac, int encrypt) {
    ckeel_ticket_keys *keys = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), keel_keys_index);
    if (!keys || !keel_ticket_cipher) return -1;
    keel_ticket_key key;
    int result;
    pthread_mutex_lock(&keys->lock);
    if (encrypt) {
        if (keel_now() - keys->current.created >= keys->lifetime) keel_rotate_locked(keys);
        key = keys->current;
        result = key.valid ? 1 : -1;
    } else if (keys->current.valid && memcmp(name, keys->current.name, 16) == 0) {
        key = keys->current;
        // TLS 1.3 clients use a ticket once (RFC 8446, C.4): renewing gives them the next one.
        result = SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
    } else if (keys->previous.valid && memcmp(name, keys->previous.name, 16) == 0
               && keel_now() - keys->previous.created < 2 * keys->lifetime) {
        key = keys->previous;
        result = 2;  // accepted, and a fresh ticket is issued under the current key
    } else {
        result = 0;  // unknown or expired key: a full handshake
    }
    pthread_mutex_unlock(&keys->lock);
    if (result <= 0) return result;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof key.hmac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (encrypt) {
        memcpy(name, key.name, 16);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1) return -1;
        if (EVP_EncryptInit_ex(cipher, keel_ticket_cipher, NULL, key.aes, iv) != 1) return -1;
    } else if (EVP_DecryptInit_ex(cipher, keel_ticket_cipher, NULL, key.aes, iv) != 1) {
        return -1;
    }
    if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
    OPENSSL_cleanse(&key, sizeof key);
    return result;
}

int ckeel_ssl_ctx_set_ticket_keys(SSL_CTX *ctx, ckeel_ticket_keys *keys) {
    pthread_once(&keel_index_once, keel_make_indices);
    if (SSL_CTX_set_ex_data(ctx, keel_keys_index, keys) != 1) return 0;
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, keel_ticket_callback) == 1;
}

// MARK: Owners and client sessions

void ckeel_ssl_ctx_set_owner(SSL_CTX *ctx, void *owner) {
    pthread_once(&keel_index_once, keel_make_indices);
    SSL_CTX_set_ex_data(ctx, keel_owner_index, owner);
}
void *ckeel_ssl_get_ctx_owner(const SSL *ssl) {
    pthread_once(&keel_index_once, keel_make_indices);
    return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), keel_owner_index);
}

void ckeel_ssl_ctx_set_client_session_callback(SSL_CTX *ctx, ckeel_new_session_callback callback) {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, callback);
}
