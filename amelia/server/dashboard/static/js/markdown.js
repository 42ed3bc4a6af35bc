// A small Markdown renderer for plans: headings, paragraphs, lists, fenced code, inline code,
// bold and italics. It builds DOM nodes (never innerHTML), so a plan cannot inject markup.

import { h } from "./dom.js";

const INLINE = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*)/;

function inline(text) {
  const nodes = [];
  for (const part of text.split(INLINE)) {
    if (!part) continue;
    if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
      nodes.push(h("code", { text: part.slice(1, -1) }));
    } else if (part.startsWith("**") && part.endsWith("**") && part.length > 4) {
      nodes.push(h("strong", { text: part.slice(2, -2) }));
    } else if (part.startsWith("*") && part.endsWith("*") && part.length > 2) {
      nodes.push(h("em", { text: part.slice(1, -1) }));
    } else {
      nodes.push(part);
    }
  }
  return nodes;
}

/** Render `text` as Markdown into a `<div class="markdown">`. */
export function renderMarkdown(text) {
  const root = h("div", { class: "markdown" });
  const lines = String(text || "")
    .replace(/\r\n?/g, "\n")
    .split("\n");
  let paragraph = [];
  let list = null;

  const flush = () => {
    if (paragraph.length) root.append(h("p", {}, inline(paragraph.join(" "))));
    paragraph = [];
    list = null;
  };

  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const fence = line.match(/^\s*```/);
    if (fence) {
      flush();
      const code = [];
      for (i += 1; i < lines.length && !/^\s*```/.test(lines[i]); i += 1) code.push(lines[i]);
      root.append(h("pre", {}, h("code", { text: code.join("\n") })));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flush();
      // Plans start at h1; the page title is the h1, so shift plan headings down one level.
      const level = Math.min(heading[1].length + 2, 6);
      root.append(h(`h${level}`, {}, inline(heading[2])));
      continue;
    }
    const item = line.match(/^\s*(?:([-*+])|(\d+)[.)])\s+(.*)$/);
    if (item) {
      if (paragraph.length) flush();
      const tag = item[1] ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = h(tag);
        root.append(list);
      }
      list.append(h("li", {}, inline(item[3])));
      continue;
    }
    if (!line.trim()) {
      flush();
      continue;
    }
    if (list && /^\s+/.test(line)) {
      list.lastElementChild.append(" ", ...inline(line.trim()));
      continue;
    }
    list = null;
    paragraph.push(line.trim());
  }
  flush();
  return root;
}
