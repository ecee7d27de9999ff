import { render } from "preact";
import { App } from "./App";
import { loadConfig } from "./api";
import "./style.css";

loadConfig().then((config) => render(<App config={config} />, document.getElementById("app")!));
