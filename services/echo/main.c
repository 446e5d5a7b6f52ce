/* echo: the demo service. It registers "echo" with the broker(s) and answers echo.Echo; used
 * by the runtime's tests and the broker benchmark. Everything else is the runtime's job. */
#include "extranet/svc.h"

extern const svc_method_t echo_methods[];

static const svc_def_t s_echo = {
    .name = "echo",
    .usage = "echo: answers echo.Echo with the data it was sent (no own variables).\n",
    .methods = echo_methods,
};

int main(int argc, char **argv) { return svc_main(&s_echo, argc, argv); }
