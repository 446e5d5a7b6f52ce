/* A throw-away redis-server for unit tests (as hiredis' own tests do): on a free loopback
 * port, no persistence, killed with the test process. */
#ifndef TESTS_REDIS_SERVER_H
#define TESTS_REDIS_SERVER_H
#include <sys/types.h>

/* A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it). */
int redis_server_free_port(void);
/* Starts redis-server on a free port and waits (deadline 5 s, polling) until it answers.
 * Returns its pid and the port in *ret_port, or -1 when redis-server is missing or failed. */
pid_t redis_server_start(int *ret_port);
/* Resumes (if paused), terminates and reaps it; pid <= 0 does nothing. */
void redis_server_stop(pid_t pid);
/* Sleeps ms milliseconds (EINTR resumed). */
void redis_server_sleep_ms(int ms);
#endif
