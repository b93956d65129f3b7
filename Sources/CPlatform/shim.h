// The Linux calls Glibc's Swift module does not import. Header only; do not define _GNU_SOURCE
// here (it breaks the build on fd_set conflicts).
#ifndef CAUCUS_CPLATFORM_SHIM_H
#define CAUCUS_CPLATFORM_SHIM_H
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <pthread.h>
#include <time.h>
#include <dirent.h>
#include <sys/stat.h>

extern int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);
extern int pthread_setname_np(pthread_t thread, const char *name);

static inline int caucus_errno(void) { return errno; }
#endif
