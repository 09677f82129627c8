// /historique: instant filter of the cards shown (Enter searches the whole database), layout toggle, rename.
import {initFilter, initLayoutToggle, initRename} from './common.js';

const container = document.querySelector('[data-cards]');
initLayoutToggle();
if (container) {
  const applyFilter = initFilter(container);
  initRename(container, applyFilter);
}
