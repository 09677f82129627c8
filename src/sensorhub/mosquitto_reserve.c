/*
 * sensorhub's Mosquitto plugin: client ids starting with a reserved prefix are for one user only, and a board
 * waiting for its name hears its own assignment only.
 *
 * 1. Reserved client ids. Mosquitto 2.0 lets any client connect with any client id and then disconnects the
 * client that had it (and, without a clean start, hands it that client's session). Its dynamic security plugin
 * can tie a user to a client id, not a client id to a user: an anonymous client could still take the ingest
 * client's id over. This plugin refuses the CONNECT ("not authorized") of a client whose id starts with a reserved
 * prefix unless it logs in as the user the prefix is reserved for; it says nothing about any other client (the
 * next plugin, or allow_anonymous, decides), so boards keep connecting anonymously with any other id.
 *
 * 2. Own assignment only (docs/scaling.md, "The name assignment is a broadcast"). Every board waiting for its
 * name subscribes to state/nameAssign and the server answers every MAC join there: without this filter each
 * answer goes to every board still waiting, and a power cut of N boards costs about N^2/2 deliveries of a QoS 2
 * message. The firmware cannot change, the broker can: it asks its plugins (MOSQ_EVT_ACL_CHECK, READ) once per
 * subscriber before delivering a message to it, with the payload. So:
 *   - a client that publishes a MAC (XX:XX:XX:XX:XX:XX, hex digits in either case, as the ingest client accepts
 *     it) on the join topic has that MAC remembered for its connection (a hash table keyed by the client's
 *     `struct mosquitto *`, open addressing: O(1));
 *   - such a client is then denied every message of the assignment topic whose MAC (before the first `;`) is
 *     not its own: one delivery a join instead of one per waiting board;
 *   - a client that subscribes to the assignment topic hears none of it until it joins, for the join grace at
 *     most (plugin_opt_join_grace, seconds; 0: no grace). A board subscribes, waits for its SUBACK and joins at
 *     once; until it joins nothing tells it from mosquitto_sub, and without the grace the lines published in
 *     that window reached every board in it (measured: 28 a board, 17,900 boards joining at once);
 *   - a client that never published a MAC join on this connection (mosquitto_sub once its grace is over, the
 *     ingest client, a bridge before its first forwarded join) hears every assignment as before, and so does one
 *     that published two different MACs on one connection (a bridge forwarding its edge's boards' joins: it
 *     becomes unfiltered on its second MAC, before the server can have answered that join, so none of its
 *     boards' answers is lost);
 *   - the entry is forgotten when the client disconnects (MOSQ_EVT_DISCONNECT: Mosquitto 2.0.11 sent it for a
 *     DISCONNECT, a closed socket, a keepalive timeout and a client id takeover, checked) and, should the broker
 *     ever free a client without that event and reuse its memory for a new one, when that new client's CONNECT is
 *     checked (MOSQ_EVT_BASIC_AUTH, asked of every client): a new connection always starts unfiltered.
 * Writes are never refused here and every other check is deferred at once (one strcmp): the next plugin (the
 * dynamic security plugin) decides as before. As a side effect a board no longer hears the other boards' MACs,
 * names and sessions (docs/security.md).
 *
 *   plugin /path/to/sensorhub_reserve.so
 *   plugin_opt_reserve1 sensorhub-ingest- sensorhub      (prefix, space, user; any option named reserve*)
 *   plugin_opt_own_assignment state/join state/nameAssign (join topic, space, assignment topic)
 *   plugin_opt_join_grace 5                               (seconds a subscriber hears nothing until it joins)
 *   plugin_opt_otherwise allow                            (allow what this plugin would defer: for a broker with
 *                                                          no other access control, such as the bench's edges)
 *
 * Built by `sensorhub broker` with the system's C compiler (src/sensorhub/reserve.py) against Mosquitto's own
 * headers (Debian packages mosquitto-dev and libmosquitto-dev, the version of the installed broker).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_RESERVED 16
#define MAC_LENGTH 17
#define FIRST_SLOTS 1024

struct reserved { char *prefix; char *user; };

enum slot_state { SLOT_EMPTY = 0, SLOT_USED, SLOT_GONE };
enum heard {
	ONE_MAC = 0,   /* joined with `mac`: hears its own lines only */
	SEVERAL_MACS,  /* joined for several boards (a bridge), or a listener: hears every line */
	NOT_YET,       /* subscribed to the assignment topic, not joined yet: hears nothing until `since` + grace,
	                  then it is forgotten (a listener: it hears every line) */
};
/* A client that subscribed to the assignment topic or published a MAC join on its connection. */
struct slot {
	const struct mosquitto *client;
	long long since;        /* NOT_YET: when it subscribed (CLOCK_MONOTONIC, ms) */
	char mac[MAC_LENGTH];   /* ONE_MAC: its MAC, upper case (not NUL-terminated) */
	unsigned char state;
	unsigned char heard;
};
/* Open addressing, linear probing; removed entries leave a tombstone (SLOT_GONE) until the next rebuild. */
struct table {
	struct slot *slots;
	size_t size;  /* a power of two, or 0 before the first join */
	size_t used;
	size_t gone;
};

/* One per listener (per_listener_settings loads the plugin once for each): passed as the callback's userdata. */
struct instance {
	mosquitto_plugin_id_t *id;
	int count;
	struct reserved reserved[MAX_RESERVED];
	char *join_topic;    /* NULL: no filter on this listener */
	char *assign_topic;
	int otherwise;       /* what this plugin answers when it has nothing to say: DEFER, or SUCCESS */
	long long grace;     /* ms a subscriber that has not joined yet hears no assignment (0: it hears all) */
	struct table joined;
};

static size_t slot_of(const struct table *t, const struct mosquitto *client)
{
	/* Fibonacci hashing of the pointer (its low bits are alignment, the high bits of the product are mixed). */
	uint64_t h = (uint64_t)(uintptr_t)client * UINT64_C(11400714819323198485);
	return (size_t)(h >> 32) & (t->size - 1);
}

static struct slot *find(const struct table *t, const struct mosquitto *client)
{
	size_t i;
	if(t->size == 0) return NULL;
	for(i = slot_of(t, client); t->slots[i].state != SLOT_EMPTY; i = (i + 1) & (t->size - 1)){
		if(t->slots[i].state == SLOT_USED && t->slots[i].client == client) return &t->slots[i];
	}
	return NULL;
}

static void forget(struct table *t, const struct mosquitto *client)
{
	struct slot *slot = find(t, client);
	if(slot == NULL) return;
	slot->state = SLOT_GONE;
	slot->client = NULL;
	t->used--;
	t->gone++;
}

/* Rebuild into `size` slots, dropping the tombstones; 0 if out of memory (the table is then left as it was). */
static int rebuild(struct table *t, size_t size)
{
	struct slot *old = t->slots, *slots = calloc(size, sizeof(struct slot));
	size_t old_size = t->size, i, j;
	if(slots == NULL) return 0;
	t->slots = slots;
	t->size = size;
	t->gone = 0;
	for(i = 0; i < old_size; i++){
		if(old[i].state != SLOT_USED) continue;
		for(j = slot_of(t, old[i].client); slots[j].state != SLOT_EMPTY; j = (j + 1) & (size - 1));
		slots[j] = old[i];
	}
	free(old);
	return 1;
}

/* The slot for a new client (the caller fills it in), or NULL if out of memory: that client stays unfiltered. */
static struct slot *add(struct table *t, const struct mosquitto *client)
{
	size_t i, size;
	if((t->used + t->gone + 1) * 2 > t->size){
		/* At most half the slots taken: rebuilt with a quarter taken by live entries (growing or shrinking). */
		size = FIRST_SLOTS;
		while((t->used + 1) * 4 > size) size *= 2;
		if(!rebuild(t, size)) return NULL;
	}
	for(i = slot_of(t, client); t->slots[i].state == SLOT_USED; i = (i + 1) & (t->size - 1));
	if(t->slots[i].state == SLOT_GONE) t->gone--;
	t->slots[i].state = SLOT_USED;
	t->slots[i].client = client;
	t->used++;
	return &t->slots[i];
}

/* Whether `payload` is a MAC address as the ingest client accepts it (protocol.normalize_mac). */
static int is_mac(const char *payload, uint32_t length)
{
	int i;
	if(payload == NULL || length != MAC_LENGTH) return 0;
	for(i = 0; i < MAC_LENGTH; i++){
		if(i % 3 == 2 ? payload[i] != ':' : !isxdigit((unsigned char)payload[i])) return 0;
	}
	return 1;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void joined(struct instance *self, const struct mosquitto *client, const char *mac)
{
	struct slot *slot = find(&self->joined, client);
	int i;
	if(slot == NULL || slot->heard == NOT_YET){
		if(slot == NULL) slot = add(&self->joined, client);
		if(slot == NULL) return;
		for(i = 0; i < MAC_LENGTH; i++) slot->mac[i] = (char)toupper((unsigned char)mac[i]);
		slot->heard = ONE_MAC;
		return;
	}
	if(slot->heard != ONE_MAC) return;
	for(i = 0; i < MAC_LENGTH; i++){
		if(slot->mac[i] != (char)toupper((unsigned char)mac[i])){
			slot->heard = SEVERAL_MACS;  /* joins for others (a bridge): it hears every assignment */
			return;
		}
	}
}

/* A client subscribing to the assignment topic: until it joins, or for `grace` at most, it hears no line. */
static void subscribed(struct instance *self, const struct mosquitto *client)
{
	struct slot *slot;
	if(self->grace <= 0 || find(&self->joined, client) != NULL) return;
	slot = add(&self->joined, client);
	if(slot == NULL) return;
	slot->heard = NOT_YET;
	slot->since = now_ms();
}

/* Whether an assignment (MAC;name;session) is for `mac`: its text up to the first `;` is that MAC, in any case. */
static int is_for(const char *mac, const char *payload, uint32_t length)
{
	int i;
	if(payload == NULL || length < MAC_LENGTH || (length > MAC_LENGTH && payload[MAC_LENGTH] != ';')) return 0;
	for(i = 0; i < MAC_LENGTH; i++){
		if(mac[i] != (char)toupper((unsigned char)payload[i])) return 0;
	}
	return 1;
}

static int acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct instance *self = userdata;
	const struct slot *slot;
	(void)event;
	if(ed->access == MOSQ_ACL_READ){
		if(strcmp(ed->topic, self->assign_topic) != 0) return self->otherwise;
		slot = find(&self->joined, ed->client);
		if(slot == NULL) return self->otherwise;
		if(slot->heard == ONE_MAC && !is_for(slot->mac, ed->payload, ed->payloadlen)){
			return MOSQ_ERR_ACL_DENIED;  /* another board's name: not delivered to this one */
		}
		if(slot->heard == NOT_YET){
			if(now_ms() - slot->since < self->grace) return MOSQ_ERR_ACL_DENIED;  /* its join is on its way */
			forget(&self->joined, ed->client);  /* no join within the grace: a listener, it hears every line */
		}
		return self->otherwise;
	}
	if(ed->access == MOSQ_ACL_WRITE){
		if(strcmp(ed->topic, self->join_topic) == 0 && is_mac(ed->payload, ed->payloadlen)){
			joined(self, ed->client, ed->payload);
		}
	}else if(ed->access == MOSQ_ACL_SUBSCRIBE && strcmp(ed->topic, self->assign_topic) == 0){
		subscribed(self, ed->client);
	}
	return self->otherwise;
}

static int disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	struct instance *self = userdata;
	(void)event;
	forget(&self->joined, ed->client);
	return MOSQ_ERR_SUCCESS;
}

static int basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct instance *self = userdata;
	const char *id = mosquitto_client_id(ed->client);
	int i;
	(void)event;
	/* A new connection: whatever a client freed without a DISCONNECT event left at this address is not its. */
	forget(&self->joined, ed->client);
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
	free(self->join_topic);
	free(self->assign_topic);
	free(self->joined.slots);
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
	int i, rc;
	if(self == NULL) return MOSQ_ERR_NOMEM;
	self->id = identifier;
	self->otherwise = MOSQ_ERR_PLUGIN_DEFER;
	*userdata = self;
	for(i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "own_assignment") == 0){
			space = strchr(options[i].value, ' ');
			if(space == NULL || space == options[i].value || space[1] == '\0' || self->join_topic) return MOSQ_ERR_INVAL;
			self->join_topic = strndup(options[i].value, (size_t)(space - options[i].value));
			self->assign_topic = strdup(space + 1);
			if(self->join_topic == NULL || self->assign_topic == NULL) return MOSQ_ERR_NOMEM;
			continue;
		}
		if(strcmp(options[i].key, "join_grace") == 0){
			self->grace = strtoll(options[i].value, &space, 10) * 1000;
			if(*space != '\0' || self->grace < 0) return MOSQ_ERR_INVAL;
			continue;
		}
		if(strcmp(options[i].key, "otherwise") == 0){
			if(strcmp(options[i].value, "allow") != 0 && strcmp(options[i].value, "defer") != 0) return MOSQ_ERR_INVAL;
			self->otherwise = strcmp(options[i].value, "allow") == 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_PLUGIN_DEFER;
			continue;
		}
		if(strncmp(options[i].key, "reserve", 7) != 0) continue;
		space = strchr(options[i].value, ' ');
		if(space == NULL || space == options[i].value || self->count == MAX_RESERVED) return MOSQ_ERR_INVAL;
		entry = &self->reserved[self->count];
		entry->prefix = strndup(options[i].value, (size_t)(space - options[i].value));
		entry->user = strdup(space + 1);
		self->count++;
		if(entry->prefix == NULL || entry->user == NULL) return MOSQ_ERR_NOMEM;
	}
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, basic_auth, NULL, self);
	if(rc != MOSQ_ERR_SUCCESS || self->join_topic == NULL) return rc;  /* no filter: no cost on any check */
	rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, acl_check, NULL, self);
	if(rc != MOSQ_ERR_SUCCESS) return rc;
	return mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, disconnect, NULL, self);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct instance *self = userdata;
	int rc;
	(void)options;
	(void)option_count;
	if(self == NULL) return MOSQ_ERR_SUCCESS;
	rc = mosquitto_callback_unregister(self->id, MOSQ_EVT_BASIC_AUTH, basic_auth, NULL);
	if(self->join_topic != NULL){
		mosquitto_callback_unregister(self->id, MOSQ_EVT_ACL_CHECK, acl_check, NULL);
		mosquitto_callback_unregister(self->id, MOSQ_EVT_DISCONNECT, disconnect, NULL);
	}
	release(self);
	return rc;
}
