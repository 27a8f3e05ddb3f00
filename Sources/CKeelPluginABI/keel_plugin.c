/* Header-only: the C ABI of keel-server plugins (include/keel_plugin.h). */
