// The operator's page (/admin): mounts the admin app into #app.
import { render } from "preact";
import { Admin } from "./admin";

const root = document.getElementById("app")!;
root.replaceChildren(); // the "Loading…" placeholder
render(<Admin />, root);
