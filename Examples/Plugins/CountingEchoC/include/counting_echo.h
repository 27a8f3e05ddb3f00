/* counting-echo-c exports only keel_plugin_entry (see keel_plugin.h). */
#include "keel_plugin.h"
const keel_plugin *keel_plugin_entry(void);
