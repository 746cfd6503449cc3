// Types of htm-preact-standalone.js (htm 3.1.1, `htm/preact/standalone`),
// from htm's own preact/index.d.ts plus the hooks the bundle exports.
import { h, VNode, Component, createContext, ComponentChildren } from 'preact';
export * from 'preact/hooks';
declare function render(tree: VNode | ComponentChildren, parent: Element): void;
declare const html: (strings: TemplateStringsArray, ...values: any[]) => any;
export { h, html, render, Component, createContext, VNode };
