// The user's page: mounts the app into #app.
import { render } from "preact";
import { App } from "./app";

const root = document.getElementById("app")!;
root.replaceChildren(); // the "Loading…" placeholder
render(<App />, root);
