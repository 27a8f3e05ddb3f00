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
