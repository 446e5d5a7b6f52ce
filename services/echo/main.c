/* echo: the demo service. It registers "echo" with the broker(s) and answers echo.Echo; with
 * EXTRANET_ECHO_TICK_MS set it also publishes an "echo.tick" event from the tick thread. Used by
 * the runtime's tests and the broker benchmark. Everything else is the runtime's job. */
#include "extranet/cfg.h"
#include "extranet/svc.h"

extern const svc_method_t echo_methods[];
void echo_tick(svc_thread_t *t);

int main(int argc, char **argv) {
    svc_def_t def = {
        .name = "echo",
        .usage = "echo: answers echo.Echo with the data it was sent.\n"
                 "  EXTRANET_ECHO_TICK_MS  publish an echo.tick event this often, 0 = never (0)\n",
        .methods = echo_methods,
    };
    long tick_ms = 0;
    if (cfg_long("EXTRANET_ECHO_TICK_MS", 0, 0, 3600000, &tick_ms) != 0)
        return 2;
    if (tick_ms > 0) {
        def.tick = echo_tick;
        def.tick_ms = (int)tick_ms;
    }
    return svc_main(&def, argc, argv);
}
