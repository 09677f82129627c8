/*
 * sensorhub's Mosquitto plugin: client ids starting with a reserved prefix are for one user only.
 *
 * Mosquitto 2.0 lets any client connect with any client id and then disconnects the client that had it (and,
 * without a clean start, hands it that client's session). Its dynamic security plugin can tie a user to a
 * client id, not a client id to a user: an anonymous client could still take the ingest client's id over.
 * This plugin refuses the CONNECT ("not authorized") of a client whose id starts with a reserved prefix
 * unless it logs in as the user the prefix is reserved for; it says nothing about any other client (the
 * next plugin, or allow_anonymous, decides), so boards keep connecting anonymously with any other id.
 *
 *   plugin /path/to/sensorhub_reserve.so
 *   plugin_opt_reserve1 sensorhub-ingest- sensorhub      (prefix, space, user; any option named reserve*)
 *
 * Built by `sensorhub broker` with the system's C compiler (src/sensorhub/reserve.py) against Mosquitto's own
 * headers (Debian packages mosquitto-dev and libmosquitto-dev, the version of the installed broker).
 */
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_RESERVED 16

struct reserved { char *prefix; char *user; };
/* One per listener (per_listener_settings loads the plugin once for each): passed as the callback's userdata. */
struct instance {
	mosquitto_plugin_id_t *id;
	int count;
	struct reserved reserved[MAX_RESERVED];
};

static int basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct instance *self = userdata;
	const char *id = mosquitto_client_id(ed->client);
	int i;
	(void)event;
	if(id == NULL) return MOSQ_ERR_PLUGIN_DEFER;
	for(i = 0; i < self->count; i++){
		if(strncmp(id, self->reserved[i].prefix, strlen(self->reserved[i].prefix)) == 0
				&& (ed->username == NULL || strcmp(ed->username, self->reserved[i].user) != 0)){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "sensorhub: refused a client id reserved for user %s (from %s)",
			                     self->reserved[i].user, ed->username ? ed->username : "an anonymous client");
			return MOSQ_ERR_AUTH;
		}
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

static void release(struct instance *self)
{
	int i;
	for(i = 0; i < self->count; i++){
		free(self->reserved[i].prefix);
		free(self->reserved[i].user);
	}
	free(self);
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
                          int option_count)
{
	struct instance *self = calloc(1, sizeof(struct instance));
	struct reserved *entry;
	char *space;
	int i;
	if(self == NULL) return MOSQ_ERR_NOMEM;
	self->id = identifier;
	*userdata = self;
	for(i = 0; i < option_count; i++){
		if(strncmp(options[i].key, "reserve", 7) != 0) continue;
		space = strchr(options[i].value, ' ');
		if(space == NULL || space == options[i].value || self->count == MAX_RESERVED) return MOSQ_ERR_INVAL;
		entry = &self->reserved[self->count];
		entry->prefix = strndup(options[i].value, (size_t)(space - options[i].value));
		entry->user = strdup(space + 1);
		self->count++;
		if(entry->prefix == NULL || entry->user == NULL) return MOSQ_ERR_NOMEM;
	}
	return mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, basic_auth, NULL, self);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct instance *self = userdata;
	int rc;
	(void)options;
	(void)option_count;
	if(self == NULL) return MOSQ_ERR_SUCCESS;
	rc = mosquitto_callback_unregister(self->id, MOSQ_EVT_BASIC_AUTH, basic_auth, NULL);
	release(self);
	return rc;
}
