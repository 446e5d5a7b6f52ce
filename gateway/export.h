/* GET /api/v1/admin/audit/export: the audit log streamed as one CSV or JSON-lines body. The
 * route's own call (audit.Export, first page) decides the status: an error is the usual JSON
 * answer, OK opens a chunked 200 whose content reader writes that page, then asks the loop
 * thread for the next one (identity.Authenticate, then audit.Export with the page's
 * next_cursor) and suspends its connection until it arrives: no thread waits for a service, and
 * at most two pages (the one being written, the next one) are in memory per export. A page
 * that fails ends the body with an error (the connection is cut before the last chunk), so a
 * truncated export never looks complete. */
#ifndef GW_EXPORT_H
#define GW_EXPORT_H
#include "extranet/common.h"
#include "loop.h"
#include "request.h"
#include <microhttpd.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    gw_loop_t *loop;     /* borrowed; must outlive every export */
    long max_exports;    /* EXTRANET_MAX_EXPORTS (4): open at once, more get 503 */
    long page;           /* EXTRANET_EXPORT_PAGE (1000): records per audit.Export call */
    int64_t deadline_ms; /* each page's deadline (EXTRANET_DEADLINE_MS) */
} export_cfg_t;

/* Sets the configuration (copied). Call once before serving. */
void export_init(const export_cfg_t *cfg);

/* For the route's first call: sets the page size of the request message msg (borrowed; an
 * extranet.audit.ExportRequest, anything else is left alone) when the client named none. */
void export_prepare(ProtobufCMessage *msg);

/* The streamed 200 for req, whose route call answered OK (req->reply is the first page, borrowed:
 * copied here). *ret_content_type and *ret_filename get static / req-independent strings for
 * the headers (filename: at most 64 bytes). The caller adds headers, queues and destroys the
 * response; libmicrohttpd owns the export from then on. NULL with *ret_full true when
 * max_exports are open; NULL with *ret_full false when out of memory or the page is malformed
 * (logged). */
struct MHD_Response *export_open(const gw_req_t *req, bool *ret_full, const char **ret_content_type,
                                 char ret_filename[64]);

/* Exports open now. */
long export_count(void);
#endif
