// libcurl's setopt/getinfo are variadic, which Swift cannot call: one typed wrapper per argument
// type. Only the PeerClient module imports this.
#ifndef CAUCUS_CCURL_SHIM_H
#define CAUCUS_CCURL_SHIM_H
#include <curl/curl.h>

/// CURLOPT_WRITEFUNCTION and CURLOPT_HEADERFUNCTION share this shape.
typedef size_t (*caucus_curl_write_callback)(char *ptr, size_t size, size_t nmemb, void *userdata);

static inline CURLcode caucus_curl_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode caucus_curl_setopt_pointer(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode caucus_curl_setopt_string(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode caucus_curl_setopt_off_t(CURL *h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode caucus_curl_setopt_write_callback(CURL *h, CURLoption o, caucus_curl_write_callback v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode caucus_curl_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode caucus_curl_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode caucus_curl_getinfo_off_t(CURL *h, CURLINFO i, curl_off_t *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLMcode caucus_curl_multi_setopt_long(CURLM *m, CURLMoption o, long v) { return curl_multi_setopt(m, o, v); }

/// The result of a finished transfer from a CURLMSG_DONE message (the union is awkward in Swift).
static inline CURLcode caucus_curl_message_result(const CURLMsg *message) { return message->data.result; }
#endif
