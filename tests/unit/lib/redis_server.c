/* A throw-away redis-server for unit tests (redis_server.h). */
#include "redis_server.h"
#include "extranet/rds.h"
#include "extranet/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int redis_server_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

void redis_server_sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

pid_t redis_server_start(int *ret_port) {
    int p = redis_server_free_port();
    if (p <= 0)
        return -1;
    char port[16];
    snprintf(port, sizeof port, "%d", p);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    /* poll until it answers, with a deadline; never a fixed sleep */
    char url[64];
    snprintf(url, sizeof url, "127.0.0.1:%d", p);
    int64_t deadline = util_mono_ms() + 5000;
    while (util_mono_ms() < deadline) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) /* not installed or failed */
            return -1;
        rds_t *r = rds_new(url);
        redisReply *rep = r ? rds_command(r, "PING") : NULL;
        bool up = rep != NULL;
        if (rep)
            freeReplyObject(rep);
        rds_destroy(&r);
        if (up) {
            *ret_port = p;
            return pid;
        }
        redis_server_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

void redis_server_stop(pid_t pid) {
    if (pid <= 0)
        return;
    kill(pid, SIGCONT);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}
