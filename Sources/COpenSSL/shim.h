// OpenSSL 3 (libcrypto and libssl). Only the Platform module imports this: it wraps digests,
// HMAC, random bytes and constant-time comparison (Crypto.swift), and TLS (TLS.swift). Header only.
// Deprecated (pre-3.0) API is hidden so nothing new starts to depend on it; the static inline
// wrappers below stand in for what Swift cannot import (OSSL_PARAM arrays built from macros).
#ifndef CAUCUS_COPENSSL_SHIM_H
#define CAUCUS_COPENSSL_SHIM_H
#define OPENSSL_API_COMPAT 30000
#define OPENSSL_NO_DEPRECATED
#include <openssl/opensslv.h>
#if OPENSSL_VERSION_MAJOR < 3
#error "Caucus needs OpenSSL 3 or later (Debian: apt-get install libssl-dev; scripts/install-deps.sh does it)"
#endif
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/// Keys a context of the "HMAC" EVP_MAC with the digest named `digestName` ("SHA256"): 1 on
/// success, 0 on failure (the reason is on OpenSSL's error queue). `key` must not be NULL, even
/// when `keyLength` is 0 (NULL means "keep the previous key").
static inline int caucus_hmac_init(
    EVP_MAC_CTX *context, const unsigned char *key, size_t keyLength, const char *digestName) {
  OSSL_PARAM parameters[2];
  parameters[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digestName, 0);
  parameters[1] = OSSL_PARAM_construct_end();
  return EVP_MAC_init(context, key, keyLength, parameters);
}

// libssl: the functions import as they are; these two settings are macros over SSL_CTX_ctrl, and
// a server on non-blocking sockets needs both. (Likewise the SSL_OP_* constants, built with a
// function-like macro, do not import: wrap the ones TLS needs when it needs them.)

/// SSL_CTX_set_min_proto_version: 1 on success.
static inline int caucus_ssl_ctx_set_min_proto_version(SSL_CTX *context, int version) {
  return (int)SSL_CTX_set_min_proto_version(context, version);
}

/// SSL_CTX_set_mode: adds `mode` (SSL_MODE_* bits) and answers the new mode.
static inline long caucus_ssl_ctx_set_mode(SSL_CTX *context, long mode) {
  return SSL_CTX_set_mode(context, mode);
}

/// The SSL_OP_* bits Platform's TLS sets (SSL_CTX_set_options itself is a function).
/// No renegotiation: a write never has to wait for a read on the event loop.
static inline uint64_t caucus_ssl_op_no_renegotiation(void) { return SSL_OP_NO_RENEGOTIATION; }
/// A peer that closes its TCP connection without close_notify ends the stream (SSL_ERROR_ZERO_RETURN)
/// instead of failing: HTTP frames its own messages, as every HTTP/1.1 client and server assumes.
static inline uint64_t caucus_ssl_op_ignore_unexpected_eof(void) { return SSL_OP_IGNORE_UNEXPECTED_EOF; }

/// SSL_CTX_get0_chain_certs: the intermediates loaded with the context's certificate (may be NULL).
static inline STACK_OF(X509) *caucus_ssl_ctx_get0_chain_certs(SSL_CTX *context) {
  STACK_OF(X509) *chain = NULL;
  SSL_CTX_get0_chain_certs(context, &chain);
  return chain;
}

/// SSL_set_tlsext_host_name (SNI): 1 on success.
static inline int caucus_ssl_set_tlsext_host_name(SSL *ssl, const char *name) {
  return (int)SSL_set_tlsext_host_name(ssl, name);
}
#endif
