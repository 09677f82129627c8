// Every page: times written by the server in UTC are shown in the browser's time zone, the UTC value on hover.
import {localizeTimes} from './common.js';

localizeTimes();
