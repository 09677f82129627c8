"""The pages' scripts' strings, from the same catalog as the pages: base.html renders them as JSON, common.js's
`t(key, values)` reads them (`%(name)s` placeholders, as in Python)."""

from __future__ import annotations

import logging

from flask_babel import gettext as _

logger = logging.getLogger(__name__)


def script_strings() -> dict[str, str]:
    """Every string a script shows, by key, in the current request's language."""
    return {
        # common.js
        "layout.list": _("Afficher en liste"),
        "layout.grid": _("Afficher en grille"),
        "server.silent": _("le serveur web ne répond pas"),
        "server.unexpected": _("réponse inattendue du serveur web (HTTP %(status)s)"),
        "http.error": _("erreur HTTP %(status)s"),
        "count.one": _("%(shown)s appareil affiché sur %(total)s"),
        "count.many": _("%(shown)s appareils affichés sur %(total)s"),
        "series.none": _("aucune mesure"),
        "series.raw.one": _("%(count)s mesure"),
        "series.raw.many": _("%(count)s mesures"),
        "series.1m.one": _("%(count)s minute (min, moyenne, max)"),
        "series.1m.many": _("%(count)s minutes (min, moyenne, max)"),
        "series.1h.one": _("%(count)s heure (min, moyenne, max)"),
        "series.1h.many": _("%(count)s heures (min, moyenne, max)"),
        "rename.label": _("Renommer %(name)s"),
        "led.label": _("Allumer ou éteindre la LED de %(name)s"),
        "rename.late": _("Le client d'ingestion n'a pas encore enregistré le nouveau nom ; rechargez la page plus "
                         "tard."),
        "rename.sending": _("Envoi…"),
        "rename.pending": _("Demande transmise : le nom s'affichera dès que le client d'ingestion l'aura "
                            "enregistré."),
        # ledcontrol.js, livecards.js
        "led.on": _("allumée"),
        "led.off": _("éteinte"),
        " : ": _(" : "),
        "led.unconfirmed": _("l'appareil n'a pas confirmé le changement de sa LED"),
        "button.pressed": _("appuyé"),
        "button.released": _("relâché"),
        "chart.light": _("Lumière (%)"),
        "percent": _("%(value)s %%"),
        # capteurs.js
        "list.unavailable": _("Liste des capteurs indisponible (%(error)s) : nouvel essai dans quelques secondes."),
        "live.on": _("En direct"),
        "live.lost": _("Connexion au broker perdue"),
        "live.offline": _("Hors ligne"),
        "live.session": _("Votre session a pris fin : reconnectez-vous (/login) pour suivre les capteurs en direct."),
        "live.reconnecting": _("Connexion au broker MQTT perdue (%(url)s) : reconnexion en cours, les données "
                               "affichées ne sont plus à jour."),
        "live.unreachable": _("Impossible de joindre le broker MQTT (%(url)s) : nouvel essai toutes les 2 secondes."),
        "live.nolibrary": _("Bibliothèque MQTT.js absente : lancez « make install » sur le serveur, puis rechargez "
                            "la page."),
        # alertes.js
        "rule.delete": _("Supprimer la règle « %(name)s » et ses alertes ?"),
        "rule.edit": _("Modifier la règle « %(name)s »"),
        "rule.save": _("Enregistrer la règle"),
        "rule.add": _("Ajouter une règle"),
        "rule.addsubmit": _("Ajouter la règle"),
        # appareil.js
        "device.led": _("LED allumée"),
        "device.button": _("Bouton appuyé"),
        "device.light": _("Lumière"),
        "device.min": _("Minimum"),
        "device.minmax": _("Min – max"),
        "device.avg": _("Moyenne"),
        "device.bandled": _("LED"),
        "device.bandbutton": _("bouton"),
        "device.yes": _("oui"),
        "device.no": _("non"),
        "device.axislight": _("lumière"),
        "device.axisraw": _("allumée / appuyé"),
        "device.axisshare": _("part du temps"),
        "device.loading": _("Chargement…"),
        "device.unavailable": _("Mesures indisponibles : %(error)s"),
        "device.nolibrary": _("Bibliothèque de graphiques absente : lancez « make install » sur le serveur."),
        "device.band": _("La bande montre le minimum et le maximum de chaque période."),
        "device.rawnote": _("Bande pleine : LED allumée, bouton appuyé ; trait bas : éteinte, relâché."),
        "device.sharenote": _("Part de chaque période passée LED allumée, bouton appuyé."),
        "device.range": _("Du %(from)s au %(to)s (heure de votre navigateur). Lumière : %(light)s ; LED : %(led)s ; "
                          "bouton : %(button)s."),
        "device.order": _("Choisissez un début antérieur à la fin."),
    }
