/* config.h: run configuration, `key = value` INI files parsed with inih.
 *
 * A config is a list of (section, key, value) entries.  Typed getters look a key up, parse and range-check it, and
 * mark it used; after a command has read every key it knows, mn_config_check_unused turns any key nobody read into
 * an error ("unknown key"), so that a misspelt key never goes silently ignored.  Command-line overrides
 * `section.key=value` replace or add entries.  Keys are named after the struct fields they set.  Parsing does not
 * touch MPI: the distributed loader (mn_dist_config_load) reads the file on rank 0 and broadcasts the text.
 */
#ifndef MEDNET_CONFIG_H
#define MEDNET_CONFIG_H

#include <stddef.h>
#include "mednet/error.h"

typedef struct mn_config mn_config;

/* Parse INI text; `origin` names it in messages (the file name).  Syntax errors give MN_ERR_CONFIG with the line. */
mn_err mn_config_parse(const char *text, const char *origin, mn_config **out);

/* Read and parse a file (serial; see mn_dist_config_load for MPI runs). Missing file: MN_ERR_IO naming it. */
mn_err mn_config_load_file(const char *path, mn_config **out);

/* Read a whole file into a NUL-terminated malloc'd buffer (*len without the NUL). Caller frees with free(). */
mn_err mn_config_read_text(const char *path, char **text, size_t *len);

/* Apply an override "section.key=value" (a key without a section goes to section ""). */
mn_err mn_config_override(mn_config *cfg, const char *assignment);

/* Free; accepts NULL and sets *cfg to NULL. */
void mn_config_destroy(mn_config **cfg);

/* Typed getters.  A missing key gives `def` (and is not an error); a present key that does not parse or is out of
 * [lo, hi] gives MN_ERR_CONFIG naming section, key, value and origin.  Each marks the key used. */
mn_err mn_config_int(mn_config *cfg, const char *section, const char *key, long def, long lo, long hi, long *out);
mn_err mn_config_double(mn_config *cfg, const char *section, const char *key, double def, double lo, double hi,
                        double *out);
mn_err mn_config_bool(mn_config *cfg, const char *section, const char *key, int def, int *out);
/* String: *out points into the config (valid until destroy); def may be NULL. */
mn_err mn_config_string(mn_config *cfg, const char *section, const char *key, const char *def, const char **out);
/* One of `choices` (NULL-terminated); *out is the index. */
mn_err mn_config_choice(mn_config *cfg, const char *section, const char *key, const char *def,
                        const char *const *choices, int *out);
/* Comma-separated numbers into out[0..max); *n gets the count. Missing key: *n = 0. */
mn_err mn_config_doubles(mn_config *cfg, const char *section, const char *key, double *out, int max, int *n);

/* 1 if the key is present. Does not mark it used. */
int mn_config_has(const mn_config *cfg, const char *section, const char *key);

/* Number of distinct sections, in order of first appearance, and the name of section i. */
int mn_config_section_count(const mn_config *cfg);
const char *mn_config_section_name(const mn_config *cfg, int i);

/* MN_ERR_CONFIG listing every key that no getter read. */
mn_err mn_config_check_unused(const mn_config *cfg);

/* The config as canonical INI text (malloc'd, caller frees), for checkpoints and logs. */
mn_err mn_config_dump(const mn_config *cfg, char **text);

/* The origin given at parse time. */
const char *mn_config_origin(const mn_config *cfg);

#endif
