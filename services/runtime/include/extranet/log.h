/* JSON-lines logging on stderr: {"time","level","service","request_id","msg"} and, for
 * warnings and errors, "src":"file:func:line". Never log secrets (passwords, tokens, TOTP). */
#ifndef EXTRANET_LOG_H
#define EXTRANET_LOG_H
#include "extranet/common.h"

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Sets the service name and the level from EXTRANET_LOG (debug|info|warn|error; info). */
void log_init(const char *service);
/* The request id of this thread's current work (copied, thread-local); NULL clears. */
/* The service name given to log_init (static storage; "extranet" before). */
const char *log_service(void);
void log_set_request_id(const char *request_id);
const char *log_request_id(void);
void log_write(log_level_t level, const char *file, const char *func, int line,
               const char *fmt, ...) PRINTF_LIKE(5, 6);

#define log_debug(...) log_write(LOG_DEBUG, __FILE__, __func__, __LINE__, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __FILE__, __func__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __FILE__, __func__, __LINE__, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __FILE__, __func__, __LINE__, __VA_ARGS__)
#endif
