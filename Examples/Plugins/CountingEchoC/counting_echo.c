/*
 * counting-echo-c: an example keel-server plugin in C. Every message comes back as
 * "PREFIX<n> <message>", where n counts the messages of that peer (its session state). The setting
 * `prefix` (default "") is checked by `check`; any other setting is refused there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel_plugin.h"

struct plugin_state {
    const keel_host_api *host;
    char prefix[64];
};

struct session_state {
    unsigned long messages;
};

static int check(const char *const *keys, const char *const *values, size_t count, char *error, size_t error_size) {
    for (size_t i = 0; i < count; i++) {
        if (strcmp(keys[i], "prefix") != 0) {
            snprintf(error, error_size, "unknown setting \"%s\" (fix: counting-echo-c takes only \"prefix\")", keys[i]);
            return -1;
        }
        if (strlen(values[i]) >= sizeof(((struct plugin_state *)0)->prefix)) {
            snprintf(error, error_size, "prefix is longer than 63 bytes (fix: shorten it)");
            return -1;
        }
    }
    return 0;
}

static void *create(const keel_host_api *host, const char *const *keys, const char *const *values, size_t count,
                    char *error, size_t error_size) {
    if (check(keys, values, count, error, error_size) != 0) return NULL;
    struct plugin_state *state = calloc(1, sizeof *state);
    if (state == NULL) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    state->host = host;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(keys[i], "prefix") == 0) snprintf(state->prefix, sizeof state->prefix, "%s", values[i]);
    }
    host->log(2, "counting-echo-c: created");
    return state;
}

static void destroy(void *plugin) { free(plugin); }

static void *open_peer(void *plugin, keel_peer *peer) {
    (void)plugin;
    (void)peer;
    return calloc(1, sizeof(struct session_state));
}

static void message(void *plugin, void *session, keel_peer *peer, const void *bytes, size_t length) {
    struct plugin_state *state = plugin;
    struct session_state *counts = session;
    if (counts == NULL) return;
    counts->messages += 1;
    char head[96];
    int head_length = snprintf(head, sizeof head, "%s%lu ", state->prefix, counts->messages);
    char *out = malloc((size_t)head_length + length);
    if (out == NULL) return;
    memcpy(out, head, (size_t)head_length);
    memcpy(out + head_length, bytes, length);
    state->host->send(peer, out, (size_t)head_length + length);
    free(out);
}

static void closed(void *plugin, void *session, keel_peer *peer) {
    (void)plugin;
    (void)peer;
    free(session);
}

static const keel_plugin counting_echo = {
    .abi_version = KEEL_PLUGIN_ABI_VERSION,
    .name = "counting-echo-c",
    .summary = "echoes each message as \"PREFIX<n> <message>\" (an example plugin in C)",
    .check = check,
    .create = create,
    .destroy = destroy,
    .open = open_peer,
    .message = message,
    .closed = closed,
};

const keel_plugin *keel_plugin_entry(void) { return &counting_echo; }
