/*
 * keel_plugin.h: the C ABI of keel-server's external plugins, version 1.
 *
 * A plugin is a shared library exporting one function, `keel_plugin_entry`, that returns a pointer to
 * a static `keel_plugin` describing it. keel-server loads the libraries a configuration names under
 * `plugin-libraries:` at start (RTLD_NOW | RTLD_NODELETE: a library is never unloaded; upgrade a plugin
 * with a rolling restart of the workers, SIGUSR2), checks `abi_version` and refuses a library built
 * for another version, then lets endpoints name the plugin by `name`.
 *
 * Threading: `create`, `check` and `destroy` run once per endpoint, on a thread of their own choosing.
 * `open`, `message` and `closed` run on the peer's I/O thread: a session's state is touched by one
 * thread only, but the plugin state returned by `create` is shared by every I/O thread (protect what
 * it holds). The host functions may be called only on the peer's thread, during one of these three
 * callbacks, with the `keel_peer` the callback received; never block in a callback.
 *
 * Bytes passed to `message` are valid only during the call.
 */
#ifndef KEEL_PLUGIN_H
#define KEEL_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_PLUGIN_ABI_VERSION 1u

/* One peer (a connection, a WebSocket, a UDP peer), opaque to the plugin. */
typedef struct keel_peer keel_peer;

/* What the host offers a plugin. */
typedef struct keel_host_api {
    uint32_t abi_version;
    /* Sends one message to `peer`, framed for its endpoint (a line gets its newline). Returns 0, or -1
       when the peer's flow control refused it or the peer is closed. */
    int (*send)(keel_peer *peer, const void *bytes, size_t length);
    /* Sends the message being delivered back to `peer` without copying it (from `message` only). */
    int (*reply)(keel_peer *peer);
    /* Closes `peer` (gracefully, after what is queued). */
    void (*close)(keel_peer *peer);
    /* A number unique to `peer` within its endpoint. */
    uint64_t (*peer_id)(keel_peer *peer);
    /* Logs `message` at `level` (0 trace, 1 debug, 2 info, 3 notice, 4 warning, 5 error, 6 critical). */
    void (*log)(int level, const char *message);
} keel_host_api;

/* A plugin, as `keel_plugin_entry` describes it. */
typedef struct keel_plugin {
    /* KEEL_PLUGIN_ABI_VERSION of the header the plugin was built with. */
    uint32_t abi_version;
    /* The name endpoints give in `plugin:`, and one line about it. */
    const char *name;
    const char *summary;
    /* Optional: checks an endpoint's settings (keys[i] = values[i], `count` of them) without side
       effects; returns 0, or -1 with a message (and the fix) in `error`. Runs at `--check` and
       reload time, before `create`. */
    int (*check)(const char *const *keys, const char *const *values, size_t count, char *error, size_t error_size);
    /* Makes the plugin's state for one endpoint; NULL with a message in `error` refuses to start. */
    void *(*create)(const keel_host_api *host, const char *const *keys, const char *const *values, size_t count,
                    char *error, size_t error_size);
    /* The endpoint stopped: free the state. */
    void (*destroy)(void *plugin);
    /* A peer connected: returns its session state (may be NULL). */
    void *(*open)(void *plugin, keel_peer *peer);
    /* A whole message arrived from `peer`. */
    void (*message)(void *plugin, void *session, keel_peer *peer, const void *bytes, size_t length);
    /* `peer` is gone: free the session state. */
    void (*closed)(void *plugin, void *session, keel_peer *peer);
} keel_plugin;

/* The one symbol a plugin library exports. */
typedef const keel_plugin *(*keel_plugin_entry_function)(void);
#define KEEL_PLUGIN_ENTRY_SYMBOL "keel_plugin_entry"

#ifdef __cplusplus
}
#endif

#endif
